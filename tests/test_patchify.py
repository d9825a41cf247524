import pytest
import torch

from cogvx_mini.patchify import patch_grid, patchify, unpatchify


@pytest.mark.parametrize("q", [1, 2])
def test_round_trip_and_token_order(q):
    x = torch.randn(2, 3, 4, 6, 10)
    tokens = patchify(x, 2, q)
    assert tokens.shape == (2, (4 // q) * 3 * 5, 3 * q * 2 * 2)
    assert torch.equal(unpatchify(tokens, (4 // q, 3, 5), 2, q), x)
    # token (t=1, h=2, w=3) holds the 2x2 patch at rows 4:6, columns 6:8 of frames q:2q,
    # features ordered (c, q, ph, pw) like a convolution kernel
    token = tokens[:, (1 * 3 + 2) * 5 + 3]
    assert torch.equal(token, x[:, :, q : 2 * q, 4:6, 6:8].reshape(2, -1))


def test_patch_embedding_equals_strided_convolution():
    x = torch.randn(1, 4, 3, 6, 8)
    conv = torch.nn.Conv3d(4, 7, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    linear = torch.nn.Linear(16, 7)
    linear.weight.data = conv.weight.data.reshape(7, -1)
    linear.bias.data = conv.bias.data
    ref = conv(x).flatten(2).transpose(1, 2)  # [B, t*h*w, 7]
    torch.testing.assert_close(linear(patchify(x)), ref)


def test_errors_name_the_axis():
    with pytest.raises(ValueError, match="latent width divisible by the patch size 2, got 7"):
        patchify(torch.zeros(1, 16, 3, 4, 7))
    with pytest.raises(ValueError, match="latent frames divisible by the patch size 2, got 3"):
        patch_grid(3, 4, 4, 2, 2)
    with pytest.raises(ValueError, match=r"expected latents \[B, C, T, H, W\]"):
        patchify(torch.zeros(16, 3, 4, 4))
    with pytest.raises(ValueError, match="grid"):
        unpatchify(torch.zeros(1, 10, 64), (2, 2, 2))
