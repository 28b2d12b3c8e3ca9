"""Is Torch-Pruning's Taylor better than hf_prune's on SmolLM2, or does it prune something else?

    python benchmarks/tp_counts_check.py            # about 4 minutes on 2 CPU cores
    python benchmarks/tp_counts_check.py --smoke    # tiny random Llama, seconds (CI)

quality_decoder.py hands Torch-Pruning the per-layer counts of hf_prune's query-heads-only Taylor plan. This
script records the counts Torch-Pruning actually builds, then prunes with hf_prune's own Taylor scores to exactly
those counts, so both tools are compared at identical layouts. Writes benchmarks/results/tp_counts_check.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_smollm2, tiny_smollm2
from peer_torch_pruning import llama_layers, prune_smollm2_tp
from quality_decoder import CALIBRATION_PLAYS, EVALUATION_PLAY, perplexity, shakespeare, windows
from reporting import run_meta

import hf_prune
from hf_prune.allocation import LayerPlan
from hf_prune.prune import apply_plan

RESULTS = Path(__file__).resolve().parent / "results"


def prune_to_counts(model: torch.nn.Module, importance: hf_prune.Importance, layers: list[dict]) -> None:
    """Keep, per layer, the best-scored query heads of every KV group and the best-scored neurons."""
    structure = hf_prune.ModelStructure(model)
    scores = importance.scores(structure)
    plans = []
    for i, want in enumerate(layers):
        shape = structure.shape(i)
        keep_heads = []
        for group in range(shape.kv_heads):
            heads = torch.arange(group * shape.group_size, (group + 1) * shape.group_size)
            best = heads[scores.heads[i][heads].argsort(descending=True)[: want["heads"] // shape.kv_heads]]
            keep_heads += sorted(best.tolist())
        keep_neurons = sorted(scores.neurons[i].argsort(descending=True)[: want["neurons"]].tolist())
        plans.append(LayerPlan(keep_heads, list(range(shape.kv_heads)), keep_neurons))
    apply_plan(structure, plans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.2, help="fraction of block parameters to remove")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        dense, tokenizer = tiny_smollm2()
        window, calibration_windows, eval_windows = 32, 2, 2
    else:
        dense, tokenizer = load_smollm2(plain=True)
        window, calibration_windows, eval_windows = 512, 16, 8
    calibration = windows(tokenizer, [shakespeare(p) for p in CALIBRATION_PLAYS], window, calibration_windows)
    evaluation = windows(tokenizer, [shakespeare(EVALUATION_PLAY)], window, eval_windows)
    taylor = hf_prune.calibrate(copy.deepcopy(dense), calibration, "taylor")

    ours = copy.deepcopy(dense)
    report = hf_prune.prune(
        ours, params=args.target, importance=taylor, ranking="global", gqa_mode="query_heads", reconstruct=False
    )
    peer = prune_smollm2_tp(copy.deepcopy(dense), report.layers_after, "taylor", calibration)
    built, _ = llama_layers(peer)
    at_peer_counts = copy.deepcopy(dense)
    prune_to_counts(at_peer_counts, taylor, built)
    data = {
        "target": args.target,
        "hf_prune_plan_perplexity": perplexity(ours, evaluation),
        "torch_pruning_perplexity": perplexity(peer, evaluation),
        "hf_prune_at_torch_pruning_counts_perplexity": perplexity(at_peer_counts, evaluation),
        "layers_differing": [
            {"layer": i, "asked": asked, "torch_pruning_built": got}
            for i, (asked, got) in enumerate(zip(report.layers_after, built, strict=True))
            if asked != got
        ],
        "meta": run_meta(args.smoke),
    }
    name = "tp_counts_check-smoke" if args.smoke else "tp_counts_check"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: v for k, v in data.items() if k != "meta"}, indent=2))


if __name__ == "__main__":
    main()
