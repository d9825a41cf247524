"""How a built model runs fast and on many GPUs, applied from outside and in place (the model
code knows nothing of it): activation checkpointing, compile, attention kernels, FSDP2, Ulysses
context parallelism."""
