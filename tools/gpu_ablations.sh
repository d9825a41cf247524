#!/usr/bin/env bash
# Every ablation of chapter 10 at the `laptop` budget on one lent GPU machine, across as many
# device calls as it takes: one process per arm and seed (PARALLEL at once), each part kept under
# outputs/ablation_parts/, so a call that ends at its 10-minute limit loses nothing. The first
# call starts the run in its own process session (it outlives the call while the machine stays
# warm); every call waits up to WAIT seconds, then sends back book/ablations/ and the parts as
# one archive ($OUT/ablations.tgz) and says "finished" or "still running". Call it again within
# the machine's 30 s warm window until it says finished. A fresh machine resumes from the parts
# it is sent (carry outputs/ablation_parts).
#   device run: OUT=$OUT bash tools/gpu_ablations.sh   (WAIT=560 PARALLEL=13 BUDGET=laptop)
# A smoke test here: BUDGET=tiny DEVICE=cpu PARALLEL=2 PYTHON=.venv/bin/python OUT=/tmp/o bash ...
set -u
WAIT=${WAIT:-560}
PARALLEL=${PARALLEL:-13}
BUDGET=${BUDGET:-laptop}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
mkdir -p outputs "${OUT:?set OUT to the folder that is sent back}"
log=outputs/ablations-$BUDGET.log
done_flag=outputs/ablations-$BUDGET.done
if [ ! -f "$done_flag" ] && ! pgrep -f "cogvx_mini.experiments all --budget $BUDGET" >/dev/null; then
    echo "starting the $BUDGET ablations, $PARALLEL processes at once"
    PYTHONPATH=. PYTHONUNBUFFERED=1 setsid nohup bash -c \
        "$PYTHON -m cogvx_mini.experiments all --budget $BUDGET --device $DEVICE \
         --parallel $PARALLEL --out book/ablations && touch $done_flag" >"$log" 2>&1 </dev/null &
fi
start=$SECONDS
while [ ! -f "$done_flag" ] && [ $((SECONDS - start)) -lt "$WAIT" ]; do
    sleep 10
    pgrep -f "cogvx_mini.experiments all --budget $BUDGET" >/dev/null || break
done
tail -c 3000 "$log"
tar czf "$OUT/ablations.tgz" book/ablations "outputs/ablation_parts/$BUDGET" "$log"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
if [ -f "$done_flag" ]; then
    echo finished
elif pgrep -f "cogvx_mini.experiments all --budget $BUDGET" >/dev/null; then
    echo "still running"
else
    echo "stopped before the end: see $log (a rerun keeps the finished parts)"
fi
