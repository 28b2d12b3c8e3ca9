#!/usr/bin/env bash
# Accuracy of MiniLM-L6 on Rotten Tomatoes: dense vs pruned to 25/40/60% fewer block FLOPs with the
# gradual schedule, with and without distillation, same training budget (one epoch of pruning each).
# Appends to benchmarks/results/minilm_gradual.jsonl (delete it first for a fresh table).
# About 30 minutes on 2 quiet CPU cores. Runs the most informative settings (40%) first.
set -euo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/results/minilm_gradual.jsonl
for setting in "0.4 --distill" "0.4" "0.6 --distill" "0.6" "0.25 --distill" "0.25"; do
  set -- $setting
  flops=$1
  distill=${2:-}
  tag="minilm-flops${flops}${distill:+-distill}"
  if [ -f "$results" ] && grep -q "\"flops_target\": ${flops}, \"distill\": $([ -n "$distill" ] && echo true || echo false)" "$results"; then
    echo "skip $tag (already in $results)"
    continue
  fi
  python examples/prune_minilm_sentiment.py --flops "$flops" $distill --results "$results" --output "outputs/$tag"
done
