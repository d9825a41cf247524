import torch

from cogvx_mini.vae import VAE3D
from cogvx_mini.vae_2d import flicker_score, per_frame_config, psnr


def test_per_frame_vae_treats_frames_independently():
    torch.manual_seed(0)
    cfg = per_frame_config()
    vae = VAE3D(cfg).eval()
    x = torch.rand(1, 3, 6, 16, 16) * 2 - 1
    x2 = x.clone()
    x2[:, :, 2] = -x2[:, :, 2]
    with torch.no_grad():
        z, z2 = vae.encode(x).mean, vae.encode(x2).mean
        y, y2 = vae.decode(z), vae.decode(z2)
    assert z.shape == (1, 4, 6, 2, 2)  # any frame count, 4 channels per frame
    keep = [0, 1, 3, 4, 5]
    assert torch.equal(z[:, :, keep], z2[:, :, keep]) and torch.equal(y[:, :, keep], y2[:, :, keep])
    assert not torch.equal(y[:, :, 2], y2[:, :, 2])


def test_latent_budget_matches_3d():
    from cogvx_mini.vae import VAEConfig

    three_d = VAEConfig.mini().latent_shape((1, 3, 17, 64, 64))
    n3 = three_d[1] * three_d[2]
    n2 = per_frame_config().latent_channels * 17
    assert n3 == 80 and n2 == 68


def test_flicker_score():
    x = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    assert torch.equal(flicker_score(x, x), torch.zeros(2))
    # A constant offset is not flicker; an offset that alternates sign every frame is.
    assert torch.allclose(flicker_score(x + 0.1, x), torch.zeros(2), atol=1e-5)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0]).view(1, 1, 5, 1, 1)
    assert torch.allclose(flicker_score(x + 0.1 * sign, x), torch.full((2,), 0.2 * 127.5))


def test_psnr():
    x = torch.zeros(1, 3, 2, 4, 4)
    assert torch.allclose(psnr(x + 0.2, x), torch.tensor([10 * torch.log10(torch.tensor(100.0))]))
