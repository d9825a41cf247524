"""Run-time choices applied to a built transformer (cogvx_mini.parallel.runtime) compute what the
plain eager model computes, and keep every parameter name."""

import pytest
import torch

from cogvx_mini.attention import attend
from cogvx_mini.parallel import (
    apply_activation_checkpointing,
    apply_compile,
    use_attention_backend,
)
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig

CONFIG = TransformerConfig.mini(num_layers=2)


def _model(seed=0):
    """A model whose AdaLN-zero and output layers are not zero, so every path carries gradient."""
    torch.manual_seed(seed)
    model = CogVideoXTransformer(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.05)
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, CONFIG.in_channels, 3, 4, 6, generator=g)
    text = torch.randn(2, 7, CONFIG.text_dim, generator=g)
    return latents, text, torch.tensor([3.5, 870.0])


def _output_and_grads(model):
    out = model(*_inputs())
    out.square().mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def _assert_same(a, b, **tolerance):
    torch.testing.assert_close(a[0], b[0], **tolerance)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k], msg=k, **tolerance)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_in_place_is_the_plain_model(mode):
    plain = _output_and_grads(_model())
    model = _model()
    keys = list(model.state_dict())
    assert apply_activation_checkpointing(model, mode, every=1) is model
    assert list(model.state_dict()) == keys
    assert type(model.blocks[0]).forward is not model.blocks[0].forward  # the block's own class
    checkpointed = _output_and_grads(model)
    torch.testing.assert_close(checkpointed[0], plain[0], rtol=0, atol=0)  # same forward ops
    _assert_same(checkpointed, plain)
    apply_activation_checkpointing(model, "none")
    assert all("forward" not in vars(block) for block in model.blocks)  # plain again


def test_checkpointing_every_other_block_and_bad_arguments():
    model = apply_activation_checkpointing(_model(), "full", every=2)
    assert ["forward" in vars(b) for b in model.blocks] == [True, False]
    with pytest.raises(ValueError, match="mode: expected one of .*, got 'some'"):
        apply_activation_checkpointing(model, "some")
    with pytest.raises(ValueError, match="every: expected an int >= 1, got 0"):
        apply_activation_checkpointing(model, "full", every=0)


def test_attention_backend_is_the_plain_model():
    plain = _output_and_grads(_model())
    model = use_attention_backend(_model(), "math")
    assert all(block.attn.core is not attend for block in model.blocks)
    _assert_same(_output_and_grads(model), plain, rtol=1e-5, atol=1e-5)
    assert all(block.attn.core is attend for block in use_attention_backend(model, "auto").blocks)
    with pytest.raises(ValueError, match="attention backend"):
        use_attention_backend(model, "fastest")


def test_compiled_blocks_are_the_plain_model_and_follow_later_checkpointing():
    from torch._dynamo.utils import counters

    plain = _output_and_grads(_model())
    model = _model()
    keys = list(model.state_dict())
    apply_compile(model, backend="aot_eager")  # dynamo + AOT autograd, no C++ toolchain needed
    assert list(model.state_dict()) == keys
    _assert_same(_output_and_grads(model), plain, rtol=1e-5, atol=1e-5)
    for mode in ("full", "selective"):
        graphs = counters["stats"]["unique_graphs"]
        model.zero_grad()
        apply_activation_checkpointing(model, mode)
        _assert_same(_output_and_grads(model), plain, rtol=1e-5, atol=1e-5)
        assert counters["stats"]["unique_graphs"] > graphs, mode  # recompiled with the checkpoint
