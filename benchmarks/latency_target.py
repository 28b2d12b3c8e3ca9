"""Is a latency target met? MiniLM-L6 pruned one-shot to ``latency=T`` (T of the measured forward latency at batch
8 x 128 removed), then timed against the dense model in alternating rounds; a FLOPs target of the same fraction for
comparison.

    python benchmarks/latency_target.py --targets 0.3 0.5 0.3 0.5    # each target twice

Magnitude importance (the latency question does not depend on the criterion), uniform ranking. The latency table is
measured by hf_prune itself, on this machine, at the start of each pruning. Results go to
results/latency_target.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_minilm
from reporting import run_meta

import hf_prune
from hf_prune.latency import compare_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    dense, _ = load_minilm()
    dense.eval()
    rows = []
    for target in args.targets:
        for measure in ("latency", "flops"):
            model = copy.deepcopy(dense)
            settings = {measure: target, "importance": "magnitude", "reconstruct": False}
            if measure == "latency":
                settings.update(latency_batch_size=args.batch_size, latency_seq_len=args.seq_len)
            report = hf_prune.prune(model, **settings)
            before, after = compare_latency(dense, model, args.batch_size, args.seq_len, repeats=args.repeats)
            removed = 1 - after.median_ms / before.median_ms
            row = {
                "target": {measure: target},
                "dense_ms": round(before.median_ms, 2),
                "pruned_ms": round(after.median_ms, 2),
                "latency_removed": round(removed, 4),
                "block_flops_removed": round(
                    1 - report.after.block_flops_per_token / report.before.block_flops_per_token, 4
                ),
                "layers_after": report.layers_after[0],
            }
            if measure == "latency":
                entry = report.extra["latency"]
                row["predicted_removed"] = round(1 - entry["predicted_ms"] / entry["dense_ms"], 4)
                row["miss"] = round(removed - target, 4)
                row["rounds"] = entry["rounds"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| target | latency removed (measured) | predicted | block FLOPs removed |\n|---|---|---|---|")
    for row in rows:
        ((measure, value),) = row["target"].items()
        predicted = f"{row['predicted_removed']:.0%}" if "predicted_removed" in row else "-"
        print(f"| {measure}={value} | {row['latency_removed']:.1%} | {predicted} | {row['block_flops_removed']:.0%} |")
    result = {
        **run_meta(smoke=False),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "rows": rows,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "latency_target.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
