"""The VAE's fast inference path (cogvx_mini.vae_fast) computes the plain modules' function."""

import pytest
import torch

from cogvx_mini.data.toyworld import sample_video
from cogvx_mini.vae import VAE3D, VAEConfig, load_mini_vae
from cogvx_mini.vae_fast import FastConv3d

SMALL = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_groups=4)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def fast_and_plain(vae, run):
    """``run(vae)`` without autograd, on the fast path and on the plain modules."""
    with torch.no_grad():
        fast = run(vae)
        vae.fast_inference = False
        try:
            plain = run(vae)
        finally:
            vae.fast_inference = True
    return fast, plain


def randomised_vae():
    """A random VAE whose norms are far from the identity (so a wrong fused affine shows)."""
    torch.manual_seed(0)
    vae = VAE3D(VAEConfig(**SMALL)).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return vae


@pytest.mark.parametrize("time_slice", [None, 1, 2])
def test_random_weights_fast_equals_plain(time_slice):
    vae = randomised_vae()
    vae.time_slice = time_slice
    video = torch.rand(2, 3, 17, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(2, 16, 5, 2, 3, generator=torch.Generator().manual_seed(2))
    (enc, dec), (enc_plain, dec_plain) = fast_and_plain(
        vae, lambda v: (v.encode(video).mean, v.decode(z))
    )
    assert rel_err(enc, enc_plain) <= 1e-5 and rel_err(dec, dec_plain) <= 1e-5


@pytest.mark.parametrize("time_slice", [None, 2])
def test_shipped_weights_fast_equals_plain(time_slice):
    vae = load_mini_vae()
    vae.time_slice = time_slice
    video = sample_video(7, 17, 64, 64)[0][None]
    z = torch.randn(1, 16, 5, 8, 8, generator=torch.Generator().manual_seed(3))
    (enc, dec), (enc_plain, dec_plain) = fast_and_plain(
        vae, lambda v: (v.encode(video).mean, v.decode(z))
    )
    assert rel_err(enc, enc_plain) <= 1e-5 and rel_err(dec, dec_plain) <= 1e-5


def test_row_tiled_streamed_decode_fast_equals_plain_tiled():
    # Row tiles are a tile geometry (both paths tile alike); streaming is the fast path's alone.
    vae = load_mini_vae()
    vae.config, vae.time_slice = vae.config.row_tiles(96, 64), 2
    z = torch.randn(1, 16, 3, 12, 8, generator=torch.Generator().manual_seed(4))
    fast, plain = fast_and_plain(vae, lambda v: v.decode(z, tiled=True))
    assert rel_err(fast, plain) <= 1e-5


def test_autograd_takes_the_plain_path_and_keeps_the_input():
    vae = randomised_vae()
    vae.time_slice = 2
    z = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fast = vae.decode(z)
    z_grad = z.clone().requires_grad_()
    plain = vae.decode(z_grad)
    plain.square().sum().backward()
    assert torch.equal(z_grad.detach(), z) and z_grad.grad.abs().sum() > 0
    assert rel_err(plain.detach(), fast) <= 1e-5


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (1, 1, 1)])
def test_fast_conv_kernels_equal_nn_conv3d(kernel):
    torch.manual_seed(0)
    conv = FastConv3d(4, 6, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))
    x = torch.randn(2, 4, 5, 6, 7, requires_grad=True)
    fast = conv(x)
    plain = torch.nn.Conv3d.forward(conv, x)
    assert rel_err(fast, plain) <= 1e-5
    (g_fast,) = torch.autograd.grad(fast.square().sum(), x)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), x)
    assert rel_err(g_fast, g_plain) <= 1e-5
