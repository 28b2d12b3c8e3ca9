#!/usr/bin/env bash
# Gradual pruning of MiniLM-L6 on Rotten Tomatoes with and without bias compensation at each mask update, on a
# short budget (0.3 epochs) where recovery is incomplete. About 35 minutes on one core. Writes
# benchmarks/results/gradual_compensation_{off,bias}.jsonl (delete them first for fresh figures).
set -euo pipefail
cd "$(dirname "$0")/.."
dense=outputs/minilm-dense
[ -f "$dense/config.json" ] || python benchmarks/gradual_compensation.py --compensation dense -- --epochs 1 --dense-dir "$dense"
for flops in 0.6 0.4; do
  for mode in bias off; do
    python benchmarks/gradual_compensation.py --compensation "$mode" -- --epochs 0.3 --flops "$flops" \
      --dense-dir "$dense" --output "outputs/minilm-compensation-$flops-$mode" \
      --results "benchmarks/results/gradual_compensation_$mode.jsonl"
  done
done
