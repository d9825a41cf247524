"""scale/: train and fine-tune CogVideoX-2B/5B on many GPUs with the same ``cogvx_mini`` modules.

``config`` (typed YAML configs), ``parallel`` (device mesh, FSDP2, activation checkpointing,
Ulysses context parallelism), ``data`` (latent cache, toy world, buckets), ``train`` (the
torchrun entry point), ``precompute`` (videos + captions -> cached latents and text embeddings),
``bench`` (step time, MFU, peak memory), ``gpu_checks.sh`` (the GPU measurements), ``sample``
(full-size text-to-video from released weights).
"""
