"""Dense vs pruned: parameters, FLOPs and measured forward latency on the real checkpoints.

    python benchmarks/speed.py --models minilm smollm2 --fractions 0.5 --batch-sizes 8

Writes benchmarks/results/speed-<device>.json and prints a Markdown table. The pruned model is saved and
loaded back (plain transformers where the config can express it, hf_prune otherwise) before it is timed,
so the figures are those of the checkpoint a user would ship.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import MODELS

import hf_prune
from hf_prune.latency import compare_latency, device_name

RESULTS = Path(__file__).resolve().parent / "results"


def run(model_name: str, fraction: float, batch_sizes: list[int], seq_len: int, repeats: int, device: str) -> dict:
    dense, _ = MODELS[model_name]()
    dense = dense.to(device).eval()
    pruned = copy.deepcopy(dense).cpu()
    report = hf_prune.prune(pruned, heads=fraction, neurons=fraction)
    with tempfile.TemporaryDirectory() as tmp:
        hf_prune.save_pretrained(pruned, Path(tmp) / "pruned")
        pruned = hf_prune.from_pretrained(Path(tmp) / "pruned").to(device).eval()
    rows = []
    for batch in batch_sizes:
        dense_latency, pruned_latency = compare_latency(dense, pruned, batch, seq_len, repeats)
        dense_ms, pruned_ms = dense_latency.median_ms, pruned_latency.median_ms
        speedup = dense_ms / pruned_ms
        rows.append(
            {
                "batch_size": batch,
                "seq_len": seq_len,
                "dense_ms": dense_ms,
                "pruned_ms": pruned_ms,
                "speedup": speedup,
                "flops_ratio": report.flops_ratio,
                "efficiency": speedup / report.flops_ratio,
            }
        )
    return {
        "model": model_name,
        "fraction": fraction,
        "parameters_dense": report.before.parameters,
        "parameters_pruned": report.after.parameters,
        "flops_ratio": report.flops_ratio,
        "vanilla_loadable": report.vanilla_loadable,
        "layers_after": report.layers_after,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=sorted(MODELS))
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.5])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    results = [
        run(m, f, args.batch_sizes, args.seq_len, args.repeats, args.device)
        for m in args.models
        for f in args.fractions
    ]
    meta = {
        "device": device_name(device),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_prune": hf_prune.__version__,
        "command": "python " + " ".join(sys.argv),
    }
    output = args.output or RESULTS / f"speed-{device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"{meta['device']}, torch {meta['torch']}, transformers {meta['transformers']}")
    header = (
        "model | removed | params dense -> pruned | batch | dense ms | pruned ms | speedup | FLOPs ratio | efficiency"
    )
    print(f"| {header} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for row in r["rows"]:
            print(
                f"| {r['model']} | {r['fraction']:.0%} | {r['parameters_dense'] / 1e6:.1f}M -> "
                f"{r['parameters_pruned'] / 1e6:.1f}M | {row['batch_size']} | {row['dense_ms']:.1f} | "
                f"{row['pruned_ms']:.1f} | {row['speedup']:.2f} | {row['flops_ratio']:.2f} | {row['efficiency']:.2f} |"
            )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
