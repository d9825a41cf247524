import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cogvx_mini.causal_conv import (
    CausalConv3d,
    CausalConvStack,
    context_parallel_stack,
    run_chunked,
)


def _video(t=12, c=4, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, c, t, h, w, generator=g)


@pytest.mark.parametrize("kernel", [2, 3, 5])
def test_single_conv_is_causal_bit_for_bit(kernel):
    torch.manual_seed(0)
    conv = CausalConv3d(4, 3, (kernel, 3, 3))
    x = _video()
    y = conv(x)
    assert y.shape == (1, 3, 12, 6, 5)
    for t in range(11):
        x2 = x.clone()
        x2[:, :, t + 1 :] = torch.randn_like(x2[:, :, t + 1 :])
        y2 = conv(x2)
        assert torch.equal(y[:, :, : t + 1], y2[:, :, : t + 1])
        assert not torch.equal(y[:, :, t + 1 :], y2[:, :, t + 1 :])  # the future does matter


def test_stack_is_causal_and_receptive_field_grows():
    torch.manual_seed(0)
    stack = CausalConvStack(4, depth=3, kernel_size=3)
    x = _video(t=10)
    y = stack(x)
    x2 = x.clone()
    x2[:, :, 5:] += 1.0
    y2 = stack(x2)
    assert torch.equal(y[:, :, :5], y2[:, :, :5])
    # Output frame 9 sees frames 9-6 = 3 ... 9 (3 layers x 2 past frames); frame 2 does not count.
    x3 = x.clone()
    x3[:, :, 2] += 1.0
    y3 = stack(x3)
    assert torch.equal(y[:, :, 9], y3[:, :, 9])
    assert not torch.equal(y[:, :, 8], y3[:, :, 8])


def test_first_frame_replicated_like_diffusers():
    from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXCausalConv3d

    torch.manual_seed(0)
    ref = CogVideoXCausalConv3d(4, 3, kernel_size=3)
    mine = CausalConv3d(4, 3, 3)
    mine.load_state_dict(ref.state_dict())
    x = _video()
    torch.testing.assert_close(mine(x), ref(x)[0], rtol=1e-5, atol=1e-6)
    # and chunk by chunk with diffusers' own cache
    out, cache, pieces = [], {}, []
    ref_cache = None
    for piece in x.split([5, 4, 3], dim=2):
        y_ref, ref_cache = ref(piece, conv_cache=ref_cache)
        pieces.append(y_ref)
        out.append(mine(piece, cache))
    torch.testing.assert_close(torch.cat(out, 2), torch.cat(pieces, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunks", [1, 2, 3, 5, [1, 4, 7], [7, 1, 1, 3]])
def test_conv_cache_equals_one_shot(chunks):
    torch.manual_seed(0)
    stack = CausalConvStack(4, depth=3, kernel_size=3)
    x = _video()
    torch.testing.assert_close(run_chunked(stack, x, chunks), stack(x), rtol=1e-5, atol=1e-6)


def test_chunk_sizes_must_cover_the_video():
    with pytest.raises(ValueError, match="expected 12 frames"):
        run_chunked(CausalConvStack(4, 1), _video(), [5, 5])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cp_worker(rank, world, port, sizes, state, x, expected, result_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        stack = CausalConvStack(4, depth=3, kernel_size=3)
        stack.load_state_dict(state)
        start = sum(sizes[:rank])
        local = x[:, :, start : start + sizes[rank]]
        y = context_parallel_stack(stack, local)
        ok = torch.allclose(y, expected[:, :, start : start + sizes[rank]], rtol=1e-5, atol=1e-6)
        torch.save(ok, os.path.join(result_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sizes", [[6, 6], [4, 3, 5]])
def test_context_parallel_equals_single_process(sizes, tmp_path):
    torch.manual_seed(0)
    stack = CausalConvStack(4, depth=3, kernel_size=3)
    x = _video()
    expected = stack(x).detach()
    world = len(sizes)
    args = (world, _free_port(), sizes, stack.state_dict(), x, expected, str(tmp_path))
    mp.spawn(_cp_worker, args=args, nprocs=world, join=True)
    assert [torch.load(tmp_path / f"{r}.pt") for r in range(world)] == [True] * world


def test_simulated_context_parallel_and_dependencies():
    from cogvx_mini.causal_conv import frame_dependencies, simulate_context_parallel

    torch.manual_seed(0)
    stack = CausalConvStack(4, depth=2, kernel_size=3)
    x = _video()
    outs, messages = simulate_context_parallel(stack, x, [4, 3, 5])
    torch.testing.assert_close(torch.cat(outs, 2), stack(x), rtol=1e-5, atol=1e-6)
    assert messages == [[(1, 4, 2, 6, 5)] * 2] * 2  # k-1 = 2 frames to each next rank, per conv
    deps = frame_dependencies(stack, x)
    # 2 layers of kernel 3: output t sees inputs t-4 ... t (and frame 0 through the padding)
    expected = torch.tensor([[0 <= t - j <= 4 for j in range(12)] for t in range(12)])
    assert torch.equal(deps, expected)
