#!/usr/bin/env bash
# Multi-node training of CogVideoX-5B with scale/train.py under Slurm: one torchrun per node,
# 8 GPUs each; torchrun's c10d rendezvous on the first node joins them into one world.
#
#   sbatch --nodes=4 scale/slurm_example.sh /path/to/latent_cache runs/5b
#
# Context-parallel groups are consecutive ranks, so with cp <= 8 they stay inside a node (NVLink);
# FSDP shards over all nodes. Adjust the account, partition and the environment activation.
#SBATCH --job-name=cogvx-5b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
#SBATCH --requeue
set -euo pipefail

DATA=${1:?usage: sbatch scale/slurm_example.sh LATENT_CACHE OUT [--set key=value ...]}
OUT=${2:?usage: sbatch scale/slurm_example.sh LATENT_CACHE OUT [--set key=value ...]}
shift 2
CONFIG=${CONFIG:-cogvideox_5b}

cd "${SLURM_SUBMIT_DIR:-$(pwd)}"
source .venv/bin/activate
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=8
# Resumes from the newest complete checkpoint in $OUT/checkpoints after a requeue or a crash.
srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$SLURM_NNODES" --nproc_per_node=8 \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$HEAD_NODE:29500" \
    scale/train.py --config "$CONFIG" --data "$DATA" --out "$OUT" "$@"
