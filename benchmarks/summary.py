"""Print the README's result tables from the JSON in benchmarks/results/ (so the README quotes the files).

python benchmarks/summary.py              # every table whose result file exists
python benchmarks/summary.py --results DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(meta: dict[str, Any]) -> str:
    parts = [
        meta.get("device", "?"),
        f"torch {meta.get('torch', '?')}",
        f"transformers {meta.get('transformers', '?')}",
    ]
    if "torch_pruning" in meta:
        parts.append(f"torch-pruning {meta['torch_pruning']}")
    return f"{', '.join(parts)}; `{meta.get('command', '?')}`"


def speed_table(data: dict[str, Any]) -> str:
    lines = [
        f"Speed ({_machine(data['meta'])}): forward at batch × {data['results'][0]['rows'][0]['seq_len']} tokens, "
        "decode = one token with the KV cache after the prompt; efficiency = forward speedup / FLOPs ratio.",
        "",
        "| model | removed | params | FLOPs ratio | batch | forward ms dense → pruned | speedup | efficiency | "
        "decode speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        for row in r["rows"]:
            decode = f"{row['decode_speedup']:.2f}" if "decode_speedup" in row else "–"
            lines.append(
                f"| {r['model']} | {r['fraction']:.0%} | {r['parameters_dense'] / 1e6:.1f}M → "
                f"{r['parameters_pruned'] / 1e6:.1f}M | {r['flops_ratio']:.2f} | {row['batch_size']} | "
                f"{row['forward_dense_ms']:.1f} → {row['forward_pruned_ms']:.1f} | {row['forward_speedup']:.2f} | "
                f"{row['forward_speedup'] / r['flops_ratio']:.2f} | {decode} |"
            )
    return "\n".join(lines)


def quality_table(data: dict[str, Any], x: str, y: str, fmt: str) -> str:
    """One row per curve, one column per target; the dense value first."""
    targets = sorted({p["target"] for points in data["curves"].values() for p in points})
    lines = [
        f"Quality ({_machine(data['meta'])}); dense {format(data[f'dense_{y}'], fmt)}"
        + (
            f", dense after the recovery fine-tuning {format(data[f'dense_fine_tuned_{y}'], fmt)}"
            if f"dense_fine_tuned_{y}" in data
            else ""
        )
        + f". Cells: {y} (measured fraction removed).",
        "",
        "| method | " + " | ".join(f"target {t:.0%}" for t in targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for name, points in data["curves"].items():
        by_target = {p["target"]: p for p in points}
        cells = [f"{format(by_target[t][y], fmt)} ({by_target[t][x]:.0%})" if t in by_target else "–" for t in targets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    sections = []
    if speed := _load(args.results / "speed-cpu.json"):
        sections.append(speed_table(speed))
    if encoder := _load(args.results / "quality_encoder.json"):
        sections.append(quality_table(encoder, "flops_removed", "accuracy", ".1%"))
    if decoder := _load(args.results / "quality_decoder.json"):
        sections.append(quality_table(decoder, "params_removed", "perplexity", ".1f"))
    if peer := _load(args.results / "peer_torch_pruning.json"):
        from peer_torch_pruning import table

        sections.append(f"Peer ({_machine(peer['meta'])}):\n\n{table(peer['results'])}")
    print("\n\n".join(sections) if sections else f"no results in {args.results}")


if __name__ == "__main__":
    main()
