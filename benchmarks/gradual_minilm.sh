#!/usr/bin/env bash
# Accuracy of MiniLM-L6 on Rotten Tomatoes: dense vs pruned to 25/40/60% fewer block FLOPs with the
# gradual schedule, with and without distillation, same training budget (one epoch of pruning each).
# Writes benchmarks/results/minilm_gradual.jsonl. About 30 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/results/minilm_gradual.jsonl
rm -f "$results"
for flops in 0.25 0.4 0.6; do
  for distill in "" "--distill"; do
    python examples/prune_minilm_sentiment.py --flops "$flops" $distill --results "$results" \
      --output "outputs/minilm-flops${flops}${distill:+-distill}" "$@"
  done
done
