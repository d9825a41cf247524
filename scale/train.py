"""Train or fine-tune CogVideoX with FSDP2 and context parallelism, on one process or many.

    torchrun --nproc_per_node=8 scale/train.py --config cogvideox_5b \
        --data /path/to/latent_cache --out runs/5b
    python scale/train.py --config tiny --data toy --out /tmp/tiny   # CPU

``--data`` is a folder written by ``scale/precompute.py`` (cached VAE latents and text
embeddings) or ``toy`` (the toy world as pseudo-latents, for tests). ``--set key=value``
overrides the config (``--set train.steps=100 --set parallel.cp=2``). The run resumes from the
newest checkpoint under ``OUT/checkpoints`` whose files match the SHA-256 digests recorded when
it was saved, unless ``--no-resume``; ``train.init_from`` fine-tunes from a cogvx_mini transformer
state dict (safetensors) or a released model's diffusers folder. Rank 0 shows a progress bar and
writes ``OUT/metrics.jsonl``; at the end it writes ``OUT/transformer.safetensors`` and
``OUT/transformer_ema.safetensors``. A non-finite loss or gradient stops the run (exit status 1)
before the weights change, keeping the last checkpoint.

``--set lora.rank=64`` (and ``lora.alpha``, ``lora.dropout``, ``lora.targets``) fine-tunes a LoRA
of ``train.init_from`` instead (:mod:`cogvx_mini.training.lora`): the LoRA layers are added
before FSDP wraps the model, only their factors train (and are averaged by the EMA), and the run
writes ``OUT/lora/`` and ``OUT/lora_ema/``, each a ``pytorch_lora_weights.safetensors`` that
diffusers' ``CogVideoXPipeline.load_lora_weights`` and ``scale/sample.py --lora`` read.

The step is the library's (``cogvx_mini.training``): ``Objective.per_sample_loss`` per
micro-batch, ``optimizer_step`` (finite-loss guard, clipping, AdamW, ``EMA``), ``LRSchedule``,
``TimestepLossTracker``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cogvx_mini.parallel import Dist, build_transformer, init_distributed
from cogvx_mini.timestep_sampling import TimestepLossTracker
from cogvx_mini.training.ema import EMA
from cogvx_mini.training.latent_cache import BatchPlan, LatentCache, ToyLatents, noise_like
from cogvx_mini.training.objective import DiffusionBatch, Objective
from cogvx_mini.training.scale_config import ScaleConfig, check_world, load_config
from cogvx_mini.training.step import NonFiniteLossError, optimizer_step
from cogvx_mini.weights.checkpoint import check_digests, file_digests

T_BUCKETS = 10  # loss is reported per tenth of the timestep range


# ---------------------------------------------------------------------------------------------
# Distributed checkpoints: torch.distributed.checkpoint into a temporary folder, then rename.
# DCP's .metadata is a pickle: a folder is loaded only if every file matches the SHA-256 digest
# recorded in its meta.json when it was saved.

STEP_DIR = re.compile(r"^step_(\d{8})$")
TMP_PREFIX = ".tmp_step_"


def checkpoint_problems(path: Path) -> list[str]:
    """Why ``path`` cannot be resumed from (empty: complete and intact)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        digests = meta["digests"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"meta.json with file digests unreadable ({type(err).__name__})"]
    return check_digests(path, digests)


def latest_checkpoint(folder: Path, log=print) -> Path | None:
    """The newest ``step_XXXXXXXX`` checkpoint in ``folder`` that is intact; damaged or
    unverifiable newer ones are skipped with a message."""
    if not folder.is_dir():
        return None
    steps = sorted((p for p in folder.iterdir() if STEP_DIR.match(p.name)), reverse=True)
    for path in steps:
        problems = checkpoint_problems(path)
        if not problems:
            return path
        log(f"skipping checkpoint {path}: {'; '.join(problems)}")
    return None


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the ``.tmp_step_*`` folders of saves that were killed (rank 0, before training)."""
    if folder.is_dir():
        for p in folder.glob(f"{TMP_PREFIX}*"):
            print(f"removing {p}, left by an interrupted save", flush=True)
            shutil.rmtree(p, ignore_errors=True)


def save_sharded_checkpoint(
    folder: Path, step: int, model, optimizer, ema: EMA, config: ScaleConfig, d: Dist
) -> Path:
    """Save model, optimiser and EMA state with DCP (every rank writes its shards) atomically,
    with the SHA-256 of every file in ``meta.json``; keeps the newest ``keep_checkpoints``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = folder / f"step_{step:08d}"
    tmp = folder / f"{TMP_PREFIX}{step:08d}"
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd, "ema": ema.state_dict()}, checkpoint_id=tmp)
    dist.barrier()
    if d.is_main:
        meta = {"step": step, "model": config.model.__dict__, "world": d.world, "cp": d.cp}
        meta["transformer_config"] = _config_dict(config.transformer_config())
        meta["lora"] = _lora_dict(config)
        meta["digests"] = file_digests(tmp)
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


def _lora_dict(config: ScaleConfig) -> dict | None:
    """The ``lora`` section as a checkpoint records it (``None``: every weight trains)."""
    import dataclasses

    return dataclasses.asdict(config.lora) if config.lora.rank else None


def check_checkpoint_config(path: Path, config: ScaleConfig) -> dict:
    """Read ``meta.json`` and raise ``ValueError`` if the checkpoint is of another model config
    (the transformer's, or another LoRA: its parameters and what trains differ)."""
    meta = json.loads((path / "meta.json").read_text())
    ours, theirs = _config_dict(config.transformer_config()), meta["transformer_config"]
    diff = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
    if meta.get("lora") != _lora_dict(config):  # checkpoints saved before LoRA have none
        diff["lora"] = (meta.get("lora"), _lora_dict(config))
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} is of another model config ({lines})")
    return meta


def load_sharded_checkpoint(path: Path, model, optimizer, ema: EMA, config: ScaleConfig) -> int:
    """Load what :func:`save_sharded_checkpoint` saved (any world size); returns its step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta = check_checkpoint_config(path, config)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd, "ema": ema.state_dict()}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    return int(meta["step"])


def resume_point(ckpt_dir: Path, d: Dist, no_resume: bool) -> Path | None:
    """The checkpoint every rank resumes from: rank 0 cleans up and checks, then tells all."""
    choice = [None]
    if d.is_main:
        remove_stale_temporaries(ckpt_dir)
        if not no_resume:
            found = latest_checkpoint(ckpt_dir, log=lambda s: print(s, flush=True))
            choice = [str(found) if found else None]
    dist.broadcast_object_list(choice, src=0)
    return Path(choice[0]) if choice[0] else None


def export_weights(out: Path, model, ema: EMA, d: Dist, config: ScaleConfig) -> None:
    """Write the full (unsharded) weights and EMA weights as cogvx_mini state dicts, or with
    LoRA the LoRA and its EMA in diffusers' format (``OUT/lora/``, ``OUT/lora_ema/``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from cogvx_mini.weights.checkpoint import save_weights

    if config.lora.rank:
        from cogvx_mini.training.lora import save_lora_diffusers

        # Every rank gathers the shards of each factor; rank 0 writes.
        save_lora_diffusers(model, out / "lora", write=d.is_main)
        save_lora_diffusers(model, out / "lora_ema", weights=ema.state_dict(), write=d.is_main)
        dist.barrier()
        return
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
    ``cogvx_mini.parallel.build_transformer``), with LoRA layers when ``lora.rank`` > 0; returns
    ``(model, transformer_config)``."""
    adapter = LoraAdapter(config.lora.settings()) if config.lora.rank else None
    return build_transformer(config, d, on_meta, independent_init, adapter)


class LoraAdapter:
    """LoRA layers for ``build_transformer``: added before anything is sharded (every rank draws
    the same A after the seeded init), reset to B = 0 after the meta path drew every linear
    anew, and the base weights loaded around the factors. Everything but the factors is frozen."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def add(self, model) -> None:
        from cogvx_mini.training.lora import add_lora

        add_lora(model, self.settings)

    def after_materialize(self, model) -> None:
        from cogvx_mini.training.lora import reset_lora

        reset_lora(model)

    def load_init(self, model, path: str, d: Dist) -> None:
        load_base_weights(model, path, d)


def load_base_weights(model, path: str, d: Dist) -> None:
    """Rank 0 reads the plain weights at ``path`` and checks them against the LoRA model's base
    (an error stops every rank); every rank receives its shards, the LoRA factors stay."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from cogvx_mini.training.lora import base_weights
    from cogvx_mini.weights.loading import read_init_weights

    state, error = {}, [None]
    if d.is_main:
        try:
            state = base_weights(model, read_init_weights(path), source=path)
        except (OSError, ValueError) as err:
            error = [f"{type(err).__name__}: {err}"]
    dist.broadcast_object_list(error, src=0)
    if error[0]:
        raise ValueError(error[0])
    # strict=False: the factors are not in the file; every other key was checked on rank 0.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, state, options=options)


class TrainableParameters:
    """What ``EMA`` reads of a model, ``named_parameters()``, limited to the parameters that
    train: under LoRA an average of the frozen base would be a second copy of it for nothing."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(k, p) for k, p in self.model.named_parameters() if p.requires_grad]


def load_dataset(data: str, config: ScaleConfig, tcfg):
    """The toy world's pseudo-latents, or the latent cache at ``data`` (text shape checked)."""
    if data == "toy":
        return ToyLatents(
            config.data.buckets,
            config.data.toy_samples,
            tcfg.in_channels,
            config.data.text_length,
            tcfg.text_dim,
        )
    cache = LatentCache(data)
    length, dim = cache.get(0)[1].shape
    if (length, dim) != (config.data.text_length, tcfg.text_dim):
        raise ValueError(
            f"data.text_length: the cache {data} holds text of {length} tokens x {dim}, the config"
            f" expects {config.data.text_length} x {tcfg.text_dim} (re-run precompute or set it)"
        )
    return cache


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
    parser.add_argument(
        "--init-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the process group to form before giving up",
    )
    return parser.parse_args(argv)


def init_with_timeout(cp: int, device: str | None, seconds: float) -> Dist:
    """``init_distributed``, or a clear message and exit status 1 after ``seconds`` (without a
    loopback interface or with an unreachable MASTER_ADDR it would wait for half an hour)."""

    def give_up() -> None:
        addr = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT')}"
        print(
            f"error: the process group did not form within {seconds:.0f} s (rank "
            f"{os.environ.get('RANK', 0)}, MASTER_ADDR:PORT {addr}); check that every rank "
            "is started and that the address is reachable (a loopback interface for a single "
            "machine); --init-timeout sets the wait",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        return init_distributed(cp, device)
    finally:
        timer.cancel()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.set)
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    if config.lora.rank and not config.train.init_from:
        # A fresh model predicts zero (AdaLN-zero, zero output projection): no gradient reaches
        # a LoRA of its blocks.
        raise SystemExit("error: lora.rank fine-tunes train.init_from: set the weights to adapt")
    d = init_with_timeout(config.parallel.cp, args.device, args.init_timeout)
    try:
        train(config, d, args)
    except NonFiniteLossError as err:
        if d.is_main:
            folder = args.out / "checkpoints"
            saved = sorted(folder.glob("step_*")) if folder.is_dir() else []
            kept = saved[-1] if saved else "none (no checkpoint was saved)"
            print(f"error: {err}; stopped, the last checkpoint is {kept}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()


@dataclass
class Throughput:
    """Samples, tokens and FLOPs over a logging window, and its wall time."""

    seconds: float = 0.0
    samples: int = 0
    tokens: int = 0
    flops: float = 0.0

    def add(self, seconds: float, config: ScaleConfig, tcfg, bucket) -> None:
        from cogvx_mini.transformer import forward_flops

        t, text_len = config.train, config.data.text_length
        self.seconds += seconds
        self.samples += t.global_batch
        self.tokens += t.global_batch * (math.prod(bucket[1:]) // tcfg.patch_size**2 + text_len)
        self.flops += 3 * forward_flops(tcfg, *bucket[1:], text_len, t.global_batch)["total"]

    def record(self, world: int, peak_tflops: float, mem_gib: float) -> dict:
        tflops = self.flops / self.seconds / 1e12
        return {
            "samples_per_s": self.samples / self.seconds,
            "tokens_per_s": self.tokens / self.seconds,
            "tflops_per_gpu": tflops / world,
            "mfu": (tflops / world / peak_tflops) if peak_tflops else None,
            "peak_mem_gib": mem_gib,
        }


@dataclass
class ScaleRun:
    """What the loop works with: the sharded model, its data, optimiser, EMA and tracker."""

    model: torch.nn.Module
    tcfg: object
    dataset: object
    plan: BatchPlan
    objective: Objective
    optimizer: torch.optim.Optimizer
    ema: EMA
    tracker: TimestepLossTracker
    per_rank: int

    @classmethod
    def build(cls, config: ScaleConfig, d: Dist, data: str) -> ScaleRun:
        model, tcfg = build(config, d)
        dp = check_world(config, d.world, tcfg.num_heads, tcfg.patch_size)
        t, o = config.train, config.optim
        dataset = load_dataset(data, config, tcfg)
        objective = Objective.for_preset(config.model.preset)
        trainable = TrainableParameters(model)  # all of them, or the LoRA factors only
        optimizer = torch.optim.AdamW(
            [p for _, p in trainable.named_parameters()],
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
            weight_decay=o.weight_decay,
            foreach=True,
        )
        return cls(
            model,
            tcfg,
            dataset,
            BatchPlan(dataset, t.global_batch, t.seed),
            objective,
            optimizer,
            EMA(trainable, o.ema_decay),
            TimestepLossTracker(objective.num_timesteps, T_BUCKETS),
            t.global_batch // dp,
        )


def accumulate_gradients(run: ScaleRun, sp, d: Dist, config: ScaleConfig) -> float:
    """Forward and backward over this rank's micro-batches of the step's global batch ``sp``;
    returns the loss averaged over the whole global batch (all ranks)."""
    mb = config.train.micro_batch
    mine = slice(d.dp_rank * run.per_rank, (d.dp_rank + 1) * run.per_rank)
    indices, steps_t, seeds = sp.indices[mine], sp.timesteps[mine], sp.noise_seeds[mine]
    step_loss = torch.zeros((), dtype=torch.float64)
    for m in range(run.per_rank // mb):
        sl = slice(m * mb, (m + 1) * mb)
        x0, text = run.dataset.batch(indices[sl])
        noise = noise_like(tuple(x0.shape[1:]), seeds[sl])
        batch = DiffusionBatch(x0, noise, text, torch.tensor(steps_t[sl])).to(d.device)
        per_sample = run.objective.per_sample_loss(run.model, batch)  # [micro_batch]
        (per_sample.sum() / run.per_rank).backward()
        per_sample = per_sample.detach().double().cpu()
        step_loss += per_sample.sum() / run.per_rank
        run.tracker.update(torch.tensor(steps_t[sl]), per_sample)
    # Every CP rank of a sample holds its full loss: the mean over all ranks is the dp mean.
    loss_all = step_loss.to(d.device, torch.float32)
    dist.all_reduce(loss_all)
    return loss_all.item() / d.world


def window_record(run: ScaleRun, window: Throughput, config: ScaleConfig, d: Dist) -> dict:
    """Throughput, memory and loss per timestep bucket of the window (over all ranks)."""
    stats = torch.stack([run.tracker.sums, run.tracker.counts.double()])
    stats = stats.to(d.device, torch.float32)
    dist.all_reduce(stats)
    per_bucket = (stats[0] / stats[1].clamp(min=1)).tolist()
    run.tracker.reset()
    cuda = d.device.type == "cuda"
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else _cpu_rss_gib()
    record = window.record(d.world, config.train.peak_tflops, mem)
    record["loss_by_t"] = {
        f"{lo}-{hi}": round(v, 5)
        for (lo, hi), v, n in zip(run.tracker.edges(), per_bucket, stats[1], strict=True)
        if n > 0
    }
    return record


def log_line(record: dict) -> str:
    mfu = f"{record['mfu']:.1%}" if record["mfu"] is not None else "n/a"
    return (
        f"step {record['step']}: loss {record['loss']:.4f} lr {record['lr']:.2e} "
        f"|g| {record['grad_norm']:.3f} {record['samples_per_s']:.2f} samples/s "
        f"{record['tokens_per_s']:.0f} tokens/s MFU {mfu} mem {record['peak_mem_gib']:.2f} GiB"
    )


def announce(run: ScaleRun, config: ScaleConfig, d: Dist, out: Path, latest: Path | None) -> None:
    """Rank 0: write ``config.json`` and say what trains where, from scratch or resuming."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    trained = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    lora = f" (LoRA rank {config.lora.rank}: {trained:,} trained)" if config.lora.rank else ""
    print(
        f"{sum(p.numel() for p in run.model.parameters()):,} parameters{lora} on {d.world} "
        f"ranks (dp={d.world // d.cp} x cp={d.cp}), {len(run.dataset)} samples in "
        f"{len(run.plan.keys)} buckets, "
        f"{'resuming from ' + str(latest) if latest else 'from scratch'}",
        flush=True,
    )


def train(config: ScaleConfig, d: Dist, args: argparse.Namespace) -> None:
    """The loop: plan the step, accumulate gradients, ``optimizer_step``, log, checkpoint."""
    from tqdm import tqdm

    run, t = ScaleRun.build(config, d, args.data), config.train
    ckpt_dir = args.out / "checkpoints"
    latest = resume_point(ckpt_dir, d, args.no_resume)
    start = (
        load_sharded_checkpoint(latest, run.model, run.optimizer, run.ema, config) if latest else 0
    )
    if d.is_main:
        announce(run, config, d, args.out, latest)
    metrics = open_metrics(args.out / "metrics.jsonl", start) if d.is_main else None
    window, lr = Throughput(), config.lr_schedule()
    bar = tqdm(total=t.steps, initial=start, disable=not d.is_main, desc="train", leave=False)
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(start, t.steps):
        tick, sp = time.perf_counter(), run.plan.plan(step)
        loss = accumulate_gradients(run, sp, d, config)
        grad_norm = optimizer_step(
            run.optimizer,
            run.model.parameters(),
            lr(step),
            config.optim.grad_clip,
            step,
            run.ema,
            loss,
        )
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        window.add(time.perf_counter() - tick, config, run.tcfg, sp.bucket)
        record = {"step": step + 1, "loss": loss, "lr": lr(step), "grad_norm": grad_norm}
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
            record.update(window_record(run, window, config, d))
            window = Throughput()
            if d.is_main:
                bar.write(log_line(record))
        if metrics:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        stop = args.stop_after is not None and step + 1 >= args.stop_after
        due = (step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps or stop
        if due and not args.no_checkpoints:
            save_sharded_checkpoint(
                ckpt_dir, step + 1, run.model, run.optimizer, run.ema, config, d
            )
        if stop:
            break
    bar.close()
    finished = args.stop_after is None or args.stop_after >= t.steps
    if finished and not args.no_export:
        export_weights(args.out, run.model, run.ema, d, config)
    if d.is_main:
        print(f"{'done' if finished else 'stopped'}: {args.out}", flush=True)
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
