#!/usr/bin/env bash
# The GPU measurements of issues 7 and 8, one group per call (each under 10 minutes).
#
#   bash scale/gpu_checks.sh 2b       OUT   # 1 GPU: 2B full step (selective / full ckpt, compiled)
#   bash scale/gpu_checks.sh 5b       OUT   # 1 GPU: 5B fwd+bwd, 5B full step with CPU offload
#   bash scale/gpu_checks.sh scaling  OUT   # N GPUs: 5B FSDP weak scaling 1..N, full steps
#   bash scale/gpu_checks.sh cp97     OUT   # N GPUs: 5B context parallel 2, 4, 8 at 97 frames
#   bash scale/gpu_checks.sh cp193    OUT   # N GPUs: the same at 193 frames
#   bash scale/gpu_checks.sh resume   OUT   # N GPUs: 2B DCP checkpoint on N GPUs resumed on N/2
#
# Every benchmark writes OUT/<name>.json and prints one line; `python -m cogvx_mini.bench.gpu_checks OUT`
# prints the table (run at the end of each group). Weights are drawn independently of the
# sharding, so "first loss" must agree between layouts with the same data-parallel degree.
set -uo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: bash scale/gpu_checks.sh multi|2b|5b|scaling|cp97|cp193|resume OUT"
GROUP=${1:?$USAGE}
OUT=${2:?$USAGE}
mkdir -p "$OUT"
NGPU=${NGPU:-$(python -c "import torch; print(torch.cuda.device_count())")}
C2=${C2:-cogvideox_2b}  # overridable for a CPU dry run
C5=${C5:-cogvideox_5b}
EXTRA=${EXTRA:-}  # appended to every run, e.g. EXTRA="--set parallel.compile=false"
bench() {  # bench NAME NPROC ARGS...
  local name=$1 n=$2
  shift 2
  echo "== $name ($n GPU)"
  if [ "$n" -eq 1 ]; then
    timeout 540 python -m cogvx_mini.bench scale --json "$OUT/$name.json" "$@" $EXTRA 2>&1 | grep -v Warning | tail -3
  else
    timeout 540 torchrun --nproc_per_node="$n" -m cogvx_mini.bench scale --json "$OUT/$name.json" "$@" \
      $EXTRA 2>&1 | grep -v Warning | tail -3
  fi
}

case "$GROUP" in
multi)  # the shortest proof on N GPUs: FSDP weak scaling, CP at 97 and 193 frames (then: resume)
  for n in 1 2 4; do
    [ "$n" -le "$NGPU" ] && bench "5b_fwdbwd_${n}gpu" "$n" --config $C5 --mode fwdbwd --steps 2 --warmup 1
  done
  bench "5b_step_${NGPU}gpu" "$NGPU" --config $C5 --steps 2 --warmup 1
  for frames in 97 193; do
    bench "5b_fwd_${frames}f_cp1" 1 --config $C5 --mode fwd --frames "$frames" --steps 2 --warmup 1
    bench "5b_step_${frames}f_cp${NGPU}" "$NGPU" --config $C5 --frames "$frames" \
      --set parallel.cp="$NGPU" --set parallel.activation_checkpointing=full --steps 2 --warmup 1
  done
  ;;
2b)
  bench 2b_step 1 --config $C2  # selective checkpointing (the config's default)
  bench 2b_step_full_ckpt 1 --config $C2 --set parallel.activation_checkpointing=full
  bench 2b_step_compiled 1 --config $C2 --set parallel.compile=true --warmup 3
  ;;
5b)
  bench 5b_fwdbwd 1 --config $C5 --mode fwdbwd
  bench 5b_step_offload 1 --config $C5 --set parallel.cpu_offload=true --steps 2 --warmup 1
  ;;
scaling)
  for n in 1 2 4 8; do
    [ "$n" -le "$NGPU" ] || continue
    bench "5b_fwdbwd_${n}gpu" "$n" --config $C5 --mode fwdbwd --steps 3
    [ "$n" -ge 2 ] && bench "5b_step_${n}gpu" "$n" --config $C5 --steps 3
  done
  ;;
cp97 | cp193)
  for frames in ${GROUP#cp}; do
    bench "5b_fwd_${frames}f_cp1" 1 --config $C5 --mode fwd --frames "$frames" --steps 2 --warmup 1
    for cp in 2 4 8; do
      [ "$cp" -le "$NGPU" ] || continue
      # full checkpointing: the least activation memory next to 1/cp of the 5B states
      bench "5b_step_${frames}f_cp${cp}" "$cp" --config $C5 --frames "$frames" \
        --set parallel.cp="$cp" --set parallel.activation_checkpointing=full --steps 2 --warmup 1
    done
  done
  ;;
resume)
  half=$((NGPU / 2))
  # 2B keeps the checkpoint small (34 GB: fp32 weights, Adam, EMA); only the cut run saves one.
  common=(--config $C2 --data toy --no-export --set data.toy_samples=4
    --set train.steps=4 --set train.checkpoint_every=2 --set train.log_every=1
    --set train.global_batch="$NGPU" --set train.micro_batch=1 $EXTRA)
  rm -rf "$OUT/resume_ref" "$OUT/resume_cut"
  timeout 540 torchrun --nproc_per_node="$NGPU" scale/train.py "${common[@]}" \
    --out "$OUT/resume_ref" --no-resume --no-checkpoints 2>&1 | grep -aE "step [0-9]+:|parameters on|Error" | tail -8
  timeout 540 torchrun --nproc_per_node="$NGPU" scale/train.py "${common[@]}" \
    --out "$OUT/resume_cut" --no-resume --stop-after 2 2>&1 | grep -aE "step [0-9]+:|parameters on|Error"
  timeout 540 torchrun --nproc_per_node="$half" scale/train.py "${common[@]}" \
    --out "$OUT/resume_cut" --no-checkpoints 2>&1 | grep -aE "step [0-9]+:|parameters on|resuming|Error"
  python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
read = lambda run: [json.loads(l)["loss"] for l in (out / run / "metrics.jsonl").read_text().splitlines()]
ref, cut = read("resume_ref"), read("resume_cut")
print("uninterrupted:", ref)
print("cut at 2, resumed on half the GPUs:", cut)
print("max relative difference:", max(abs(a - b) / abs(a) for a, b in zip(ref, cut)))
EOF
  ;;
*)
  echo "unknown group $GROUP" >&2
  exit 2
  ;;
esac
if ls "$OUT"/*.json >/dev/null 2>&1; then python -m cogvx_mini.bench.gpu_checks "$OUT"; fi
