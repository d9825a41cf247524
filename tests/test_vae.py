import pytest
import torch

from cogvx_mini.vae import VAE3D, DiagonalGaussian, VAEConfig, temporal_chunks
from cogvx_mini.weights.diffusers import vae_state_dict_from_diffusers

SMALL = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_groups=4)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def video_in_range(*shape, seed=0):
    """A random video with pixel values in [-1, 1], as the VAE expects."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def pair():
    """A random diffusers VAE (norm affines perturbed so that a swapped key shows) and ours."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(0)
    ref = AutoencoderKLCogVideoX(
        block_out_channels=SMALL["block_out_channels"],
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=16,
        sample_height=96,
        sample_width=96,
    ).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    cfg = VAEConfig(**SMALL, tile_sample_size=(48, 48), tile_overlap=(1 / 6, 1 / 6))
    mine = VAE3D(cfg).eval()
    mine.load_state_dict(vae_state_dict_from_diffusers(ref.state_dict()), strict=True)
    return ref, mine


def test_chunking_rule():
    assert temporal_chunks(17, 8) == [(0, 9), (9, 17)]
    assert temporal_chunks(49, 8) == [(0, 9)] + [(i, i + 8) for i in range(9, 49, 8)]
    assert temporal_chunks(5, 8) == [(0, 5)]
    assert temporal_chunks(5, 2) == [(0, 3), (3, 5)]
    assert temporal_chunks(13, 2) == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13)]
    assert temporal_chunks(1, 2) == [(0, 1)]


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
def fast(request, pair):
    """Run a test on the fast inference path and on the plain modules."""
    pair[1].fast_inference = request.param
    yield request.param
    pair[1].fast_inference = True


@pytest.mark.parametrize("frames", [1, 9, 17])
def test_encode_equals_diffusers(pair, frames, fast):
    ref, mine = pair
    x = video_in_range(1, 3, frames, 32, 40, seed=frames)
    with torch.no_grad():
        expected = ref.encode(x).latent_dist
        got = mine.encode(x)
    assert got.mean.shape == (1, 16, (frames - 1) // 4 + 1, 4, 5)
    assert rel_err(got.mean, expected.mean) <= 1e-5
    assert rel_err(got.std, expected.std) <= 1e-5


@pytest.mark.parametrize("latent_frames", [1, 3, 5])
def test_decode_equals_diffusers(pair, latent_frames, fast):
    ref, mine = pair
    z = torch.randn(2, 16, latent_frames, 4, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref.decode(z).sample
        got = mine.decode(z)
    assert got.shape == (2, 3, 4 * (latent_frames - 1) + 1, 32, 40)
    assert rel_err(got, expected) <= 1e-5


def test_tiled_encode_and_decode_equal_diffusers_tiling(pair, fast):
    ref, mine = pair
    ref.enable_tiling(
        tile_sample_min_height=48,
        tile_sample_min_width=48,
        tile_overlap_factor_height=1 / 6,
        tile_overlap_factor_width=1 / 6,
    )
    try:
        x = video_in_range(1, 3, 5, 80, 88, seed=2)
        z = torch.randn(1, 16, 1, 10, 11, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            enc_ref, enc = ref.encode(x).latent_dist.mean, mine.encode(x, tiled=True).mean
            dec_ref, dec = ref.decode(z).sample, mine.decode(z, tiled=True)
            untiled = mine.decode(z)
    finally:
        ref.disable_tiling()
    assert enc.shape == (1, 16, 2, 10, 11) and dec.shape == (1, 3, 1, 80, 88)
    assert rel_err(enc, enc_ref) <= 1e-5
    assert rel_err(dec, dec_ref) <= 1e-5
    assert rel_err(dec, untiled) > 1e-3  # tiling really happened


@pytest.mark.parametrize("time_slice", [1, 3])
def test_streaming_slices_equal_whole_chunk(pair, time_slice):
    _, mine = pair
    x = video_in_range(2, 3, 17, 16, 16, seed=4)
    z = torch.randn(2, 16, 5, 2, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        enc, dec = mine.encode(x).mean, mine.decode(z)
        mine.time_slice = time_slice
        try:
            enc_s, dec_s = mine.encode(x).mean, mine.decode(z)
        finally:
            mine.time_slice = None
    assert rel_err(enc_s, enc) <= 1e-5 and rel_err(dec_s, dec) <= 1e-5


@pytest.mark.parametrize("fast_inference", [True, False])
def test_causal_chunk_by_chunk(fast_inference):
    torch.manual_seed(0)
    vae = VAE3D(VAEConfig(**SMALL), fast_inference=fast_inference).eval()
    x = video_in_range(1, 3, 17, 16, 16, seed=0)
    x2 = x.clone()
    x2[:, :, 9:] = video_in_range(1, 3, 8, 16, 16, seed=1)
    z = torch.randn(1, 16, 5, 2, 2)
    z2 = z.clone()
    z2[:, :, 3:] = torch.randn_like(z2[:, :, 3:])
    with torch.no_grad():
        m, m2 = vae.encode(x).mean, vae.encode(x2).mean
        v, v2 = vae.decode(z), vae.decode(z2)
    # Frames 9-16 (the second encoder chunk) leave latent frames 0-2 untouched, bit for bit.
    assert torch.equal(m[:, :, :3], m2[:, :, :3]) and not torch.equal(m[:, :, 3:], m2[:, :, 3:])
    # Latent frames 3-4 (the second decoder chunk) leave frames 0-8 untouched.
    assert torch.equal(v[:, :, :9], v2[:, :, :9]) and not torch.equal(v[:, :, 9:], v2[:, :, 9:])


def test_even_latent_count_decodes_to_4k_plus_1_frames():
    # diffusers decodes an even number of latent frames into 4T' frames; we keep 4(T'-1)+1, so
    # that encode and decode are inverse in shape for every 4k+1 video.
    vae = VAE3D(VAEConfig(**SMALL)).eval()
    with torch.no_grad():
        for t in (2, 4):
            assert vae.decode(torch.zeros(1, 16, t, 2, 2)).shape[2] == 4 * (t - 1) + 1
            assert vae.encode(torch.zeros(1, 3, 4 * (t - 1) + 1, 16, 16)).mean.shape[2] == t


def test_clear_errors():
    vae = VAE3D(VAEConfig(**SMALL))
    with pytest.raises(ValueError, match=r"4k\+1.*got 16"):
        vae.encode(torch.zeros(1, 3, 16, 16, 16))
    with pytest.raises(ValueError, match="height divisible by 8, got 20"):
        vae.encode(torch.zeros(1, 3, 5, 20, 16))
    with pytest.raises(ValueError, match="expected 3 channels.*got 4"):
        vae.encode(torch.zeros(1, 4, 5, 16, 16))
    with pytest.raises(ValueError, match=r"expected latents \[B, 16"):
        vae.decode(torch.zeros(1, 4, 2, 2, 2))


def test_posterior_sample_and_kl():
    moments = torch.zeros(2, 32, 3, 2, 2)
    post = DiagonalGaussian(moments)
    assert torch.equal(post.kl(), torch.zeros(2))  # N(0, 1) is the prior
    moments = moments.clone()
    moments[:, :16] = 1.0  # mean 1, variance 1: KL = 0.5 per latent value
    assert torch.allclose(DiagonalGaussian(moments).kl(), torch.full((2,), 0.5 * 16 * 12))
    g = torch.Generator().manual_seed(0)
    a = DiagonalGaussian(moments).sample(torch.Generator().manual_seed(0))
    b = DiagonalGaussian(moments).sample(g)
    assert torch.equal(a, b) and a.shape == (2, 16, 3, 2, 2)


def test_configs():
    full = VAEConfig.cogvideox()
    assert full.latent_shape((1, 3, 49, 480, 720)) == (1, 16, 13, 60, 90)
    vae = VAE3D(full)
    n = sum(p.numel() for p in vae.parameters())
    from diffusers import AutoencoderKLCogVideoX

    ref = AutoencoderKLCogVideoX()
    assert n == sum(p.numel() for p in ref.parameters())
    keys = set(vae_state_dict_from_diffusers(ref.state_dict()))
    assert keys == set(vae.state_dict())


def test_autograd_path_equals_the_in_place_inference_path(pair):
    # Inference normalises in place and writes residuals into their input; training (autograd)
    # takes the out-of-place path. Both must compute the same function (float32 rounding aside).
    _, mine = pair
    x = video_in_range(1, 3, 9, 32, 40, seed=5)
    with torch.no_grad():
        z = mine.encode(x).mean
        fast = mine.decode(z)
    with torch.enable_grad():
        z_grad = mine.encode(x).mean
        slow = mine.decode(z_grad)
    assert slow.requires_grad
    assert rel_err(z_grad.detach(), z) <= 1e-5 and rel_err(slow.detach(), fast) <= 1e-5


def test_decoding_under_inference_mode_leaves_training_possible(pair):
    # The decoder caches small index tensors across calls; one made under inference_mode once
    # broke every later decode with autograd ("Inference tensors cannot be saved for backward").
    _, mine = pair
    z = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        mine.decode(z)
    with torch.enable_grad():
        mine.decode(z.requires_grad_()).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_module_apply_reaches_every_submodule():
    # GroupNorm3D and SpatialNorm3D once overrode nn.Module.apply, so VAE3D(...).apply(fn) raised.
    vae = VAE3D(VAEConfig(**SMALL))
    seen = []
    assert vae.apply(seen.append) is vae
    assert len(seen) == len(list(vae.modules()))
    vae.apply(lambda m: torch.nn.init.zeros_(m.bias) if isinstance(m, torch.nn.GroupNorm) else None)
    assert all(m.bias.abs().sum() == 0 for m in vae.modules() if isinstance(m, torch.nn.GroupNorm))


def test_bad_inputs_are_refused_with_what_was_expected():
    vae = VAE3D(VAEConfig(**SMALL)).eval()
    with pytest.raises(ValueError, match=r"video: expected dtype torch.float32.*got torch.float64"):
        vae.encode(torch.zeros(1, 3, 5, 16, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"latents: expected dtype torch.float32.*torch.bfloat16"):
        vae.decode(torch.zeros(1, 16, 2, 2, 2, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"video: expected a batch of at least 1, got shape \(0,"):
        vae.encode(torch.zeros(0, 3, 5, 16, 16))
    with pytest.raises(ValueError, match=r"latents: expected a batch of at least 1"):
        vae.decode(torch.zeros(0, 16, 2, 2, 2))
    with pytest.raises(ValueError, match=r"expected pixel values in \[-1, 1\], got .*\[0, 255\]"):
        vae.encode(torch.full((1, 3, 5, 16, 16), 255.0))  # frames in [0, 255], not scaled
    with pytest.raises(ValueError, match=r"expected pixel values in \[-1, 1\], got .*nan"):
        vae.encode(torch.full((1, 3, 5, 16, 16), float("nan")))
    with torch.no_grad():  # up to 1.5 passes: slightly overshooting videos are still videos
        assert vae.encode(torch.full((1, 3, 5, 16, 16), -1.4)).mean.shape == (1, 16, 2, 2, 2)


def test_architecture_shapes_name_every_block():
    from cogvx_mini.vae import architecture_shapes

    shapes = dict(architecture_shapes(VAEConfig.cogvideox(), 49, 480, 720))
    assert shapes["encoder.down.0"] == (1, 128, 25, 240, 360)  # time and space halved
    assert shapes["encoder.down.3"] == shapes["encoder.mid"] == (1, 512, 13, 60, 90)
    assert shapes["decoder.up.0"] == (1, 512, 25, 120, 180)
    assert shapes["decoder.conv_out"] == (1, 3, 49, 480, 720)
    assert len(shapes) == 15  # the video, then 7 stages in the encoder and 7 in the decoder
