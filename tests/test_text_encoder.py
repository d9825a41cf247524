import pytest
import torch
from tiny_models import tiny_t5

from cogvx_mini.data.text_encoder import T5TextEncoder, ToyTextEncoder


def test_toy_encoder_is_deterministic_and_shaped():
    enc = ToyTextEncoder(dim=32, max_length=16)
    prompts = ["a small red circle moves left", "a large blue square moves up"]
    a, b = enc.encode(prompts), ToyTextEncoder(dim=32, max_length=16).encode(prompts)
    assert a.shape == (2, 16, 32) and torch.equal(a, b)
    assert a[0, 6:].abs().sum() == 0, "padding tokens are zero"
    assert enc.encode([""]).abs().sum() == 0, "the empty prompt is the unconditional embedding"
    assert enc.encode(["w " * 40]).shape == (1, 16, 32)
    with pytest.raises(TypeError, match="list"):
        enc.encode("a red circle")


def test_toy_encoder_separates_words_and_clauses():
    enc = ToyTextEncoder(dim=64, max_length=32)
    red, blue = enc.encode(["a small red circle moves left", "a small blue circle moves left"])
    assert torch.equal(red[0], blue[0]) and not torch.allclose(red[2], blue[2])
    # The same word in the second clause is a different vector than in the first clause.
    two = enc.encode(["red moves left while red moves up"])[0]
    assert not torch.allclose(two[0], two[4] - enc._positions[4] + enc._positions[0])
    # Word vectors are nearly orthogonal: colours are easy to tell apart.
    words = torch.stack([enc.word_vector(w) for w in ["red", "green", "blue", "left", "up"]])
    cos = torch.nn.functional.cosine_similarity(words[:, None], words[None], dim=-1)
    assert (cos - torch.eye(5)).abs().max() < 0.5


def _save_tiny_t5(folder):
    """A randomly initialised tiny T5 encoder and a word-level tokenizer, saved locally."""
    tokenizer, model = tiny_t5()
    tokenizer.save_pretrained(folder / "tokenizer")
    model.save_pretrained(folder / "text_encoder")
    return tokenizer, model


def test_t5_encoder_from_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, model = _save_tiny_t5(tmp_path)
    enc = T5TextEncoder(tmp_path, max_length=12)
    prompts = ["a small red circle moves left", ""]
    out = enc.encode(prompts)
    assert out.shape == (2, 12, 16) and enc.dim == 16
    ids = tokenizer(prompts, padding="max_length", max_length=12, return_tensors="pt").input_ids
    assert ids[0, 6] == 1 and ids[1, 0] == 1, "eos appended, then padding"
    with torch.no_grad():
        expected = model.eval()(ids)[0]
    torch.testing.assert_close(out, expected)
    # Truncated at max_length, like the 226 tokens of CogVideoX.
    assert enc.encode(["red " * 50]).shape == (1, 12, 16)


def test_t5_encoder_needs_an_existing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="local folder"):
        T5TextEncoder(tmp_path / "nope")
