import pytest
import torch

from cogvx_mini.adaln import ExpertAdaLN, MMDiTAdaLN, SharedAdaLN
from cogvx_mini.transformer import TransformerBlock, TransformerConfig, count_parameters

CFG = TransformerConfig.mini(num_layers=1)


@pytest.mark.parametrize("adaln", ["expert", "none", "mmdit"])
def test_block_is_the_identity_at_init(adaln):
    torch.manual_seed(0)
    from cogvx_mini.transformer import CogVideoXTransformer

    block = CogVideoXTransformer(CFG.replace(adaln=adaln)).blocks[0]
    video, text, temb = torch.randn(2, 12, 128), torch.randn(2, 5, 128), torch.randn(2, 128)
    out_video, out_text = block(video, text, temb)
    assert torch.equal(out_video, video) and torch.equal(out_text, text)
    # and it stops being the identity once the gates move
    torch.nn.init.normal_(block.norm1.linear.weight)
    assert not torch.allclose(block(video, text, temb)[0], video)


def _same_token_as_text_and_video(norm):
    torch.manual_seed(0)
    torch.nn.init.normal_(norm.linear.weight)
    token = torch.randn(1, 1, 16)
    x = torch.cat([token, token], dim=1)  # one text token, one video token, equal inputs
    h, gate_text, gate_video = norm(x, 1, torch.randn(1, 8))
    return h[:, 0], h[:, 1], gate_text, gate_video


def test_expert_modulation_differs_between_text_and_video():
    h_text, h_video, gate_text, gate_video = _same_token_as_text_and_video(ExpertAdaLN(8, 16))
    assert not torch.allclose(h_text, h_video)
    assert not torch.allclose(gate_text, gate_video)


def test_shared_modulation_treats_both_modalities_alike():
    h_text, h_video, gate_text, gate_video = _same_token_as_text_and_video(SharedAdaLN(8, 16))
    torch.testing.assert_close(h_text, h_video)
    torch.testing.assert_close(gate_text, gate_video)


def test_mmdit_norms_are_separate():
    norm = MMDiTAdaLN(8, 16)
    torch.nn.init.normal_(norm.norm_text.weight)
    h_text, h_video, _, _ = _same_token_as_text_and_video(norm)
    assert not torch.allclose(h_text, h_video)


def test_expert_modulation_order_is_video_then_text():
    norm = ExpertAdaLN(8, 16)
    with torch.no_grad():
        norm.linear.bias[16:32] = 1.0  # video scale: 1 + 1 = 2x
    x = torch.randn(1, 3, 16)
    h, _, _ = norm(x, 1, torch.zeros(1, 8))
    ln = norm.norm(x)
    torch.testing.assert_close(h[:, 1:], 2 * ln[:, 1:])
    torch.testing.assert_close(h[:, :1], ln[:, :1])


def test_parameter_counts_of_the_variants():
    d, dt, layers = 1920, 512, 30
    expert = count_parameters(TransformerConfig.cogvideox_2b())
    none = count_parameters(TransformerConfig.cogvideox_2b(adaln="none"))
    mmdit = count_parameters(TransformerConfig.cogvideox_2b(adaln="mmdit"))
    # no expert: half the modulation outputs of both AdaLNs of every block
    assert expert - none == layers * 2 * 3 * d * (dt + 1)
    # MMDiT: plus a text copy of qkv, out, feed-forward and LayerNorms in every block
    per_block_text = (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 5 * d) + 2 * 2 * d + 2 * 128
    assert mmdit - expert == layers * per_block_text
    assert isinstance(TransformerBlock(CFG.replace(adaln="none")).norm1, SharedAdaLN)
