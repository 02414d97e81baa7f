#!/usr/bin/env bash
# Every GPU measurement the project wants, in one command of under 10 minutes; JSON results under $OUT.
#
#   OUT=/tmp/gpu METALEARN_DATA=path/with/omniglot bash benchmarks/gpu_suite.sh            # on a CUDA machine
#   OUT=/tmp/gpu bash benchmarks/gpu_suite.sh --device cpu --tiny                          # CPU dry run (tested)
#
# 1. maml_speed: one second-order MAML meta-iteration at 32 tasks (5w1s 1 step, 5w5s 5 steps), loop vs vmap vs
#    chunked vs first order vs torch.compile / CUDA graphs / bf16, with peak memory (benchmarks/maml_speed.py).
# 2. throughput: the throughput table on the device, levers off vs the default policy (cpu_throughput.py).
# 3. ttt_speed: batched per-image TTT vs the per-image loop (benchmarks/ttt_speed.py).
# 4. protonet_wallclock: ProtoNet Omniglot 5-way 1-shot trained with the default policy on the device, the
#    wall clock and test accuracy (metalearn bench; needs $METALEARN_DATA/omniglot, skipped without it).
# Each step has its own time limit and log; a failing step is recorded in summary.txt and the rest go on.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
TINY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --tiny) TINY=1; shift ;;
        *) echo "gpu_suite.sh: unknown argument $1 (expected --device D, --tiny)" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-runs/gpu_suite}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
: > "$OUT/summary.txt"

step() {   # step NAME SECONDS CMD...
    local name="$1" limit="$2"; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
}

if [ "$TINY" = 1 ]; then
    step maml_speed 120 "$PY" benchmarks/maml_speed.py --device "$DEVICE" --tasks 2 --hidden 8 --repeats 1 \
        --warmup 1 --settings 5w1s-1step --modes loop,vmap --json "$OUT/maml_speed.json"
    step throughput 300 "$PY" benchmarks/cpu_throughput.py --device "$DEVICE" --threads 1 --repeats 1 --quick \
        --workloads ceiling_mm --reps 1 --out "$OUT"
    step ttt_speed 120 "$PY" benchmarks/ttt_speed.py --device "$DEVICE" --depth 8 --images 4 --loop-images 2 \
        --chunk-size 2 --steps 1 --copies 2 --json "$OUT/ttt_speed.json"
    step protonet_wallclock 300 "$PY" -m metalearn.cli bench tasks/protonet_digits_5w5s.yaml \
        --out-root "$OUT/runs" --results "$OUT/results" --quiet --set data.device="$DEVICE" \
        --set train.steps=4 --set eval.episodes=10
else
    step maml_speed 150 "$PY" benchmarks/maml_speed.py --device "$DEVICE" --tasks 32 \
        --settings 5w1s-1step,5w5s-5step --json "$OUT/maml_speed.json"
    step throughput 150 "$PY" benchmarks/cpu_throughput.py --device "$DEVICE" --threads 1 --repeats 1 \
        --out "$OUT"
    step ttt_speed 90 "$PY" benchmarks/ttt_speed.py --device "$DEVICE" --images 1024 --loop-images 16 \
        --json "$OUT/ttt_speed.json"
    if [ -n "${METALEARN_DATA:-}" ] && [ -d "${METALEARN_DATA}/omniglot" ]; then
        step protonet_wallclock 180 "$PY" -m metalearn.cli bench tasks/protonet_omniglot_5w1s.yaml \
            --out-root "$OUT/runs" --results "$OUT/results" --quiet --set data.device="$DEVICE" \
            --set train.steps=5000 --set train.lr_step=500 --set train.split=train --set train.val_every=1000
    else
        echo "protonet_wallclock skipped: no \$METALEARN_DATA/omniglot" | tee -a "$OUT/summary.txt"
    fi
fi
echo "gpu_suite: results in $OUT" | tee -a "$OUT/summary.txt"
