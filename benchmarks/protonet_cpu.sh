#!/usr/bin/env bash
# ProtoNet on the six benchmark settings, trained on the CPU for a fixed step budget (no GPU available).
# One model per shot count: Snell et al. train 60-way (Omniglot) and test that model at 5-way and 20-way.
# Usage: METALEARN_DATA=../shared/data benchmarks/protonet_cpu.sh OUT_DIR [OMNI_STEPS_1S OMNI_STEPS_5S MINI_STEPS]
set -euo pipefail
OUT=${1:-runs/cpu}
S1=${2:-2400}; S5=${3:-1500}; SM=${4:-60}
ML=${METALEARN:-.venv/bin/metalearn}
mkdir -p "$OUT"
git rev-parse HEAD > "$OUT/commit.txt"
(lscpu | grep "Model name"; nproc) > "$OUT/machine.txt"
run() {  # name config steps extra-args...
  local name=$1 cfg=$2 steps=$3; shift 3
  echo "== $name: train $steps steps" >&2
  $ML train --config "$cfg" --out "$OUT/$name" --quiet --no-eval --set train.steps="$steps" --set train.threads=2 "$@"
}
ev() {  # name ways shots episodes
  $ML eval --checkpoint "$OUT/$1" --ways "$2" --shots "$3" --episodes "$4" --threads 2 --json > "$OUT/$1/eval_${2}w${3}s.json"
  cat "$OUT/$1/eval_${2}w${3}s.json"
}
run omniglot_1shot tasks/protonet_omniglot_5w1s.yaml "$S1" --set train.lr_step=$((S1 / 3))
ev omniglot_1shot 5 1 1000; ev omniglot_1shot 20 1 1000
run omniglot_5shot tasks/protonet_omniglot_5w5s.yaml "$S5" --set train.lr_step=$((S5 / 3))
ev omniglot_5shot 5 5 1000; ev omniglot_5shot 20 5 1000
run mini_1shot tasks/protonet_miniimagenet_5w1s.yaml "$SM" --set train.val_every=$SM --set train.val_episodes=100
ev mini_1shot 5 1 600
run mini_5shot tasks/protonet_miniimagenet_5w5s.yaml "$SM" --set train.val_every=$SM --set train.val_episodes=100
ev mini_5shot 5 5 600
