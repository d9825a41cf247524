"""Training: one train step (v-prediction loss, EMA, LR schedule, per-timestep tracking) shared by
the mini loop (``train``), the VAE loop (``vae_train``), the ablations and ``scale/train.py``."""
