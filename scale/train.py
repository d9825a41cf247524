"""Train or fine-tune CogVideoX with FSDP2 and context parallelism, on one process or many.

    torchrun --nproc_per_node=8 scale/train.py --config cogvideox_5b \
        --data /path/to/latent_cache --out runs/5b
    python scale/train.py --config tiny --data toy --out /tmp/tiny   # CPU

``--data`` is a folder written by ``scale/precompute.py`` (cached VAE latents and text
embeddings) or ``toy`` (the toy world as pseudo-latents, for tests). ``--set key=value``
overrides the config (``--set train.steps=100 --set parallel.cp=2``). The run resumes from the
newest complete checkpoint under ``OUT/checkpoints`` unless ``--no-resume``; ``train.init_from``
fine-tunes from a cogvx_mini transformer state dict (safetensors) or a released model's diffusers
folder. Rank 0 shows a progress bar and writes ``OUT/metrics.jsonl``; at the end it writes
``OUT/transformer.safetensors`` and ``OUT/transformer_ema.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from cogvx_mini.parallel import Dist, build_transformer, init_distributed
from cogvx_mini.training.latent_cache import BatchPlan, LatentCache, ToyLatents, noise_like
from cogvx_mini.training.objective import Objective
from cogvx_mini.training.scale_config import ScaleConfig, check_world, load_config

T_BUCKETS = 10  # loss is reported per tenth of the timestep range


def lr_at(step: int, config: ScaleConfig) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine / linear decay to ``min_lr_ratio``."""
    o, total = config.optim, config.train.steps
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.decay == "constant":
        return o.lr
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.decay == "cosine" else 1 - progress
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * shape)


# ---------------------------------------------------------------------------------------------
# EMA of the (sharded) parameters


class EMA:
    """Exponential moving average of the parameters, kept in fp32 with the same sharding.

    The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = dict(module.named_parameters())
        self.shadow = {k: p.detach().clone().float() for k, p in self.params.items()}

    @staticmethod
    def _local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, p in self.params.items():
            self._local(self.shadow[k]).lerp_(self._local(p).float(), 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow


# ---------------------------------------------------------------------------------------------
# Distributed checkpoints: torch.distributed.checkpoint into a temporary folder, then rename

STEP_DIR = re.compile(r"^step_(\d{8})$")


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete ``step_XXXXXXXX`` checkpoint in ``folder`` (one with meta.json)."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
    return max(done, key=lambda p: p.name, default=None)


def save_checkpoint(
    folder: Path, step: int, wrapper, optimizer, ema: EMA, config: ScaleConfig, d: Dist
) -> Path:
    """Save model, optimiser and EMA state with DCP (every rank writes its shards) atomically."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = folder / f"step_{step:08d}"
    tmp = folder / f".tmp_step_{step:08d}"
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(wrapper, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd, "ema": ema.state_dict()}, checkpoint_id=tmp)
    dist.barrier()
    if d.is_main:
        meta = {"step": step, "model": config.model.__dict__, "world": d.world, "cp": d.cp}
        meta["transformer_config"] = _config_dict(config.transformer_config())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = sorted(p for p in folder.iterdir() if STEP_DIR.match(p.name))
        for p in old[: max(0, len(old) - config.train.keep_checkpoints)]:
            shutil.rmtree(p, ignore_errors=True)
    dist.barrier()
    return final


def _config_dict(model_config) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(model_config), default=str))


def check_checkpoint_config(path: Path, config: ScaleConfig) -> dict:
    """Read ``meta.json`` and raise ``ValueError`` if the checkpoint is of another model config."""
    meta = json.loads((path / "meta.json").read_text())
    ours, theirs = _config_dict(config.transformer_config()), meta["transformer_config"]
    diff = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} is of another model config ({lines})")
    return meta


def load_checkpoint(path: Path, wrapper, optimizer, ema: EMA, config: ScaleConfig) -> int:
    """Load a checkpoint saved by :func:`save_checkpoint` (any world size); returns its step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta = check_checkpoint_config(path, config)
    model_sd, optim_sd = get_state_dict(wrapper, optimizer)
    state = {"model": model_sd, "optim": optim_sd, "ema": ema.state_dict()}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        wrapper, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    return int(meta["step"])


def export_weights(out: Path, model, ema: EMA, d: Dist) -> None:
    """Write the full (unsharded) weights and EMA weights as cogvx_mini state dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from cogvx_mini.weights.checkpoint import save_weights

    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    ema_full = {}
    for k, v in ema.state_dict().items():
        v = v.full_tensor() if hasattr(v, "full_tensor") else v
        ema_full[k] = v.cpu()
    if d.is_main:  # the parallel model keeps the plain model's parameter names
        save_weights(full, out / "transformer.safetensors")
        save_weights(ema_full, out / "transformer_ema.safetensors")
    dist.barrier()


# ---------------------------------------------------------------------------------------------


def build(
    config: ScaleConfig, d: Dist, on_meta: bool | None = None, independent_init: bool = False
):
    """The transformer, checkpointed, context-parallel and sharded with FSDP2 in place (see
    ``cogvx_mini.parallel.build_transformer``); returns ``(model, transformer_config)``."""
    return build_transformer(config, d, on_meta, independent_init)


def load_dataset(data: str, config: ScaleConfig, tcfg):
    if data == "toy":
        return ToyLatents(
            config.data.buckets,
            config.data.toy_samples,
            tcfg.in_channels,
            config.data.text_length,
            tcfg.text_dim,
        )
    return LatentCache(data)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--data", required=True, help="latent cache folder, or 'toy'")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    parser.add_argument(
        "--stop-after", type=int, default=None, help="stop after this step (an interruption)"
    )
    parser.add_argument(
        "--no-export", action="store_true", help="skip writing the full weights at the end"
    )
    parser.add_argument(
        "--no-checkpoints", action="store_true", help="never save a checkpoint (still resumes)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = load_config(args.config, args.set)
    d = init_distributed(config.parallel.cp, args.device)
    try:
        train(config, d, args)
    finally:
        dist.destroy_process_group()


def train(config: ScaleConfig, d: Dist, args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from cogvx_mini.transformer import forward_flops

    wrapper, tcfg = build(config, d)
    dp = check_world(config, d.world, tcfg.num_heads, tcfg.patch_size)
    t, o = config.train, config.optim
    per_rank = t.global_batch // dp
    accum = per_rank // t.micro_batch
    dataset = load_dataset(args.data, config, tcfg)
    plan = BatchPlan(dataset, t.global_batch, t.seed)
    objective = Objective.for_preset(config.model.preset)
    optimizer = torch.optim.AdamW(
        wrapper.parameters(),
        lr=o.lr,
        betas=tuple(o.betas),
        eps=o.eps,
        weight_decay=o.weight_decay,
        foreach=True,
    )
    ema = EMA(wrapper, o.ema_decay)
    ckpt_dir = args.out / "checkpoints"
    start = 0
    latest = None if args.no_resume else latest_checkpoint(ckpt_dir)
    if latest is not None:
        start = load_checkpoint(latest, wrapper, optimizer, ema, config)
    if d.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
        n_params = sum(p.numel() for p in wrapper.parameters())
        print(
            f"{n_params:,} parameters on {d.world} ranks (dp={dp} x cp={d.cp}), "
            f"{len(dataset)} samples in {len(plan.keys)} buckets, "
            f"{'resuming from ' + str(latest) if latest else 'from scratch'}",
            flush=True,
        )
    metrics = open_metrics(args.out / "metrics.jsonl", start) if d.is_main else None
    bucket_sum = torch.zeros(T_BUCKETS, dtype=torch.float64)
    bucket_n = torch.zeros(T_BUCKETS, dtype=torch.float64)
    window_time, window_samples, window_tokens, window_flops = 0.0, 0, 0, 0.0
    bar = tqdm(total=t.steps, initial=start, disable=not d.is_main, desc="train", leave=False)
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(start, t.steps):
        tick = time.perf_counter()
        sp = plan.plan(step)
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mine = slice(d.dp_rank * per_rank, (d.dp_rank + 1) * per_rank)
        indices, steps_t, seeds = sp.indices[mine], sp.timesteps[mine], sp.noise_seeds[mine]
        step_loss = torch.zeros((), dtype=torch.float64)
        for m in range(accum):
            sl = slice(m * t.micro_batch, (m + 1) * t.micro_batch)
            x0, text = dataset.batch(indices[sl])
            x0, text = x0.to(d.device), text.to(d.device)
            noise = noise_like(tuple(x0.shape[1:]), seeds[sl]).to(d.device)
            ts = torch.tensor(steps_t[sl], device=d.device)
            x_t, target = objective.noisy_and_target(x0, noise, ts)
            prediction = wrapper(x_t, text, ts)
            per_sample = objective.loss(prediction, target)  # [micro_batch]
            (per_sample.sum() / per_rank).backward()
            step_loss += per_sample.detach().double().sum().cpu() / per_rank
            for tv, lv in zip(steps_t[sl], per_sample.detach().double().cpu(), strict=True):
                bucket_sum[tv * T_BUCKETS // objective.num_timesteps] += lv
                bucket_n[tv * T_BUCKETS // objective.num_timesteps] += 1
        grad_norm = torch.nn.utils.clip_grad_norm_(wrapper.parameters(), o.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(step)
        # Every CP rank of a sample holds its full loss: the mean over all ranks is the dp mean.
        loss_all = step_loss.to(d.device, torch.float32)
        dist.all_reduce(loss_all)
        loss_value = loss_all.item() / d.world
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - tick
        tokens = t.global_batch * (
            math.prod(sp.bucket[1:]) // tcfg.patch_size**2 + config.data.text_length
        )
        window_time += elapsed
        window_samples += t.global_batch
        window_tokens += tokens
        text_len = config.data.text_length
        window_flops += 3 * forward_flops(tcfg, *sp.bucket[1:], text_len, t.global_batch)["total"]
        record = {"step": step + 1, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)}
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
            stats = torch.stack([bucket_sum, bucket_n]).to(d.device, torch.float32)
            dist.all_reduce(stats)
            per_bucket = (stats[0] / stats[1].clamp(min=1)).tolist()
            mem = (
                torch.cuda.max_memory_allocated() / 2**30
                if d.device.type == "cuda"
                else _cpu_rss_gib()
            )
            tflops = window_flops / window_time / 1e12
            record.update(
                samples_per_s=window_samples / window_time,
                tokens_per_s=window_tokens / window_time,
                tflops_per_gpu=tflops / d.world,
                mfu=(tflops / d.world / t.peak_tflops) if t.peak_tflops else None,
                peak_mem_gib=mem,
                loss_by_t={
                    f"{i * 100}-{(i + 1) * 100}": round(v, 5)
                    for i, v in enumerate(per_bucket)
                    if stats[1, i] > 0
                },
            )
            if d.is_main:
                mfu = f"{record['mfu']:.1%}" if record["mfu"] is not None else "n/a"
                bar.write(
                    f"step {step + 1}: loss {loss_value:.4f} lr {lr:.2e} "
                    f"|g| {float(grad_norm):.3f} {record['samples_per_s']:.2f} samples/s "
                    f"{record['tokens_per_s']:.0f} tokens/s MFU {mfu} "
                    f"mem {mem:.2f} GiB"
                )
            bucket_sum.zero_()
            bucket_n.zero_()
            window_time, window_samples, window_tokens, window_flops = 0.0, 0, 0, 0.0
        if metrics:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        stop = args.stop_after is not None and step + 1 >= args.stop_after
        due = (step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps or stop
        if due and not args.no_checkpoints:
            save_checkpoint(ckpt_dir, step + 1, wrapper, optimizer, ema, config, d)
        if stop:
            bar.close()
            return
    bar.close()
    if not args.no_export:
        export_weights(args.out, wrapper, ema, d)
    if d.is_main:
        print(f"done: {args.out}", flush=True)
        metrics.close()


def open_metrics(path: Path, start: int):
    """``metrics.jsonl`` for appending, holding only the records of steps ``<= start`` (those of
    the checkpoint resumed from; a crashed run may have logged further)."""
    kept = []
    if start and path.is_file():
        kept = [r for r in path.read_text().splitlines() if json.loads(r)["step"] <= start]
    path.write_text("".join(r + "\n" for r in kept))
    return open(path, "a")  # noqa: SIM115


def _cpu_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    main()
