import pytest
import torch

from cogvx_mini.parallel import apply_activation_checkpointing
from cogvx_mini.transformer import (
    CogVideoXTransformer,
    TransformerConfig,
    count_parameters,
    forward_flops,
)

MINI = TransformerConfig.mini()


def _inputs(config=MINI, batch=2, t=5, h=8, w=8, text_len=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, config.in_channels, t, h, w, generator=g)
    text = torch.randn(batch, text_len, config.text_dim, generator=g)
    return latents, text, torch.rand(batch, generator=g) * 1000


def _randomised(config, seed=0):
    """A model whose AdaLN-zero and output layers are not zero, so every path is exercised."""
    torch.manual_seed(seed)
    model = CogVideoXTransformer(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and not p.any():
                p.normal_(std=0.05)
    return model


def test_parameter_counts_of_the_released_models_on_meta():
    assert count_parameters(TransformerConfig.cogvideox_2b()) == 1_693_783_872
    assert count_parameters(TransformerConfig.cogvideox_5b()) == 5_570_283_072
    with torch.device("meta"):
        model = CogVideoXTransformer(TransformerConfig.cogvideox_5b())
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 3072, 3072)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"positions": "sincos"},
        {"positions": "none", "adaln": "none"},
        {"attention": "2d1d"},
        {"adaln": "mmdit"},
        {"temporal_patch_size": 2, "rope_grid": "extrapolate"},
    ],
)
def test_shapes_and_gradients_of_every_variant(changes):
    config = MINI.replace(**changes)
    model = _randomised(config)
    t = 4 if config.temporal_patch_size == 2 else 5
    latents, text, steps = _inputs(config, t=t, h=6, w=10)
    out = model(latents, text, steps)
    assert out.shape == latents.shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pieces_compose_to_forward():
    model = _randomised(MINI)
    latents, text, steps = _inputs()
    video, text_tokens, temb, rope = model.embed(latents, text, steps)
    assert video.shape == (2, 5 * 4 * 4, 128) and text_tokens.shape == (2, 16, 128)
    assert temb.shape == (2, 128) and rope[0].shape == (80, 32)
    for block in model.blocks:
        video, text_tokens = block(video, text_tokens, temb, rope)
    out = model.unembed(video, text_tokens, temb, model.grid(latents.shape))
    torch.testing.assert_close(out, model(latents, text, steps))


def test_shorter_text_is_fine_and_batch_items_are_independent():
    model = _randomised(MINI)
    latents, text, steps = _inputs(text_len=7)
    both = model(latents, text, steps)
    one = model(latents[1:], text[1:], steps[1:])
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-5)


def test_clear_errors():
    model = CogVideoXTransformer(MINI)
    latents, text, steps = _inputs()
    with pytest.raises(ValueError, match="latent width divisible by the patch size 2, got 7"):
        model(latents[..., :7], text, steps)
    with pytest.raises(ValueError, match="at most 32 text tokens, got 40"):
        model(latents, torch.randn(2, 40, 64), steps)
    with pytest.raises(ValueError, match=r"expected latents \[B, 16, T, H, W\], got shape \(2, 4,"):
        model(latents[:, :4], text, steps)
    with pytest.raises(ValueError, match=r"expected text \[2, L, 64\]"):
        model(latents, torch.randn(2, 16, 32), steps)
    with pytest.raises(ValueError, match=r"expected timesteps \[2\]"):
        model(latents, text, steps[:1])
    with pytest.raises(ValueError, match="expected attention in"):
        MINI.replace(attention="3d")


@pytest.mark.parametrize("bad", [1000.0, 1500.0, -1.0, float("nan"), float("inf")])
def test_timesteps_outside_the_schedule_are_refused(bad):
    model = CogVideoXTransformer(MINI)
    latents, text, _ = _inputs()
    with pytest.raises(ValueError, match=r"expected finite timesteps in \[0, 1000\)"):
        model(latents, text, torch.tensor([500.0, bad]))


def test_fractional_and_integer_timesteps_in_range_are_fine():
    model = CogVideoXTransformer(MINI)
    latents, text, _ = _inputs()
    for steps in (torch.tensor([0.0, 999.75]), torch.tensor([0, 999])):
        assert model(latents, text, steps).shape == latents.shape


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_gives_the_same_gradients(mode):
    latents, text, steps = _inputs()
    grads = {}
    for m in ("none", mode):
        model = _randomised(MINI)
        apply_activation_checkpointing(model, m, every=1 if m == "none" else 2)
        model(latents, text, steps).square().mean().backward()
        grads[m] = [p.grad for p in model.parameters()]
    for a, b in zip(grads["none"], grads[mode], strict=True):
        torch.testing.assert_close(a, b)


def test_forward_flops_formula():
    config = TransformerConfig.cogvideox_2b()
    flops = forward_flops(config, 13, 60, 90)
    s, d = 17_776, 1920
    assert flops["linear"] + flops["attention"] == 30 * (24 * d * d * s + 4 * s * s * d)
    assert 1.19e14 < flops["total"] < 1.21e14
    separated = forward_flops(config.replace(attention="2d1d"), 13, 60, 90)
    assert separated["attention"] < flops["attention"] / 5
    assert separated["linear"] == flops["linear"]


@pytest.fixture
def one_thread():
    """Tiny tensors run faster on one thread (and do not stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_tiny_config_overfits_one_batch(one_thread):
    torch.manual_seed(0)
    config = MINI.replace(num_layers=2, num_heads=2, head_dim=32, time_embed_dim=32, text_dim=16)
    model = CogVideoXTransformer(config)
    latents, text, steps = _inputs(config, batch=2, t=3, h=4, w=4, text_len=8)
    target = torch.randn_like(latents)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(300):
        loss = (model(latents, text, steps) - target).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if losses[-1] < losses[0] / 10:
            break
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


@pytest.mark.parametrize("mode, recomputed", [("full", 2), ("selective", 0), ("none", 0)])
def test_selective_checkpointing_does_not_recompute_attention(mode, recomputed):
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountAttention(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "scaled_dot_product" in str(func) and "backward" not in str(func):
                CountAttention.calls += 1
            return func(*args, **(kwargs or {}))

    model = apply_activation_checkpointing(_randomised(MINI.replace(num_layers=2)), mode)
    loss = model(*_inputs()).square().mean()
    with CountAttention():
        loss.backward()
    assert CountAttention.calls == recomputed
