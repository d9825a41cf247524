"""Training: one vocabulary shared by the mini loop (``train``), the VAE loop (``vae_train``), the
ablations (``cogvx_mini.experiments``) and ``scale/train.py``.

- ``objective``: ``DiffusionBatch`` and ``Objective.per_sample_loss`` (v-prediction);
- ``step``: ``train_step``, ``optimizer_step`` and the finite-loss guard (``NonFiniteLossError``);
- ``ema``: ``EMA`` (fp32 shadows, plain or FSDP-sharded parameters);
- ``schedule``: ``LRSchedule`` (warm-up, then cosine / linear / constant to a floor);
- ``overrides``: the one ``key=value`` / ``section.key=value`` override syntax;
- ``latent_cache``, ``scale_config``: ``scale/``'s data, batch plan and typed YAML configs.

Run state is saved with ``cogvx_mini.weights.checkpoint`` (safetensors + JSON, no pickle).
"""
