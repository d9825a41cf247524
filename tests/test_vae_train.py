import pytest
import torch

from cogvx_mini.training.vae_train import VAETrainConfig, train_vae, training_batch
from cogvx_mini.vae import VAE3D, VAEConfig

TINY = VAEConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_groups=4)


def tiny_cfg(**kw):
    base = dict(batch=2, frames=5, size=32, crop=16, lr=2e-3, warmup=1, pool=8, save_every=2)
    return VAETrainConfig(**{**base, **kw})


def test_batches_depend_on_step_only():
    cfg = tiny_cfg()
    assert torch.equal(training_batch(3, cfg), training_batch(3, cfg))
    assert not torch.equal(training_batch(3, cfg), training_batch(4, cfg))
    assert training_batch(0, cfg).shape == (2, 3, 5, 16, 16)


def test_loss_falls():
    torch.manual_seed(0)
    losses = train_vae(VAE3D(TINY), tiny_cfg(steps=25), progress=False)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_resume_is_exact(tmp_path):
    torch.manual_seed(0)
    straight = VAE3D(TINY)
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    train_vae(straight, tiny_cfg(steps=4), progress=False)

    resumed = VAE3D(TINY)
    resumed.load_state_dict(init)
    train_vae(resumed, tiny_cfg(steps=2), tmp_path, progress=False)
    again = VAE3D(TINY)  # a fresh process would start from scratch weights: they are reloaded
    train_vae(again, tiny_cfg(steps=4), tmp_path, progress=False)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_gan_and_perceptual_hooks_run():
    calls = []

    def perceptual(x_hat, x):
        calls.append(x_hat.shape)
        return (x_hat - x).pow(2).mean()

    cfg = tiny_cfg(steps=2, gan_weight=0.1, gan_start=1, perceptual_weight=0.5)
    losses = train_vae(VAE3D(TINY), cfg, perceptual=perceptual, progress=False)
    assert len(losses) == 2 and len(calls) == 2
    with pytest.raises(ValueError, match="perceptual network"):
        train_vae(VAE3D(TINY), cfg, progress=False)
