"""scale/: launchers that train, fine-tune and sample CogVideoX-2B/5B on many GPUs with the same
``cogvx_mini`` modules the chapters teach.

``train`` (the torchrun entry point), ``precompute`` (videos + captions -> cached latents and
text embeddings), ``sample`` (full-size text-to-video from released weights), ``gpu_checks.sh``
(the GPU measurements), ``slurm_example.sh``. Everything they use lives in ``cogvx_mini``:
configs in ``cogvx_mini.training.scale_config`` (+ ``configs/``, loadable by name), FSDP2 and
Ulysses context parallelism in ``cogvx_mini.parallel``, the benchmark in ``cogvx_mini.bench.scale``.
"""
