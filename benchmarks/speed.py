"""Dense vs pruned: parameters, FLOPs and measured latency on the real checkpoints.

    python benchmarks/speed.py                                    # full sweep (about 20 minutes on 2 CPU cores)
    python benchmarks/speed.py --models minilm --fractions 0.5 --batch-sizes 8 --repeats 20
    python benchmarks/speed.py --smoke                            # tiny random models, seconds (CI)

For each model and fraction of heads+neurons removed (magnitude, uniform), the pruned model is saved and loaded
back (plain transformers where the config can express it, hf_prune otherwise) and timed against the dense one in
alternating rounds: the forward pass (encoder; decoder prefill) at batch x 128 tokens, and for decoders one
decoding step with the KV cache after a 128-token prefill. Speedup efficiency = measured speedup / FLOPs ratio.
Writes benchmarks/results/speed-<device>.json and speed-<device>.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import MODELS
from reporting import run_meta

import hf_prune
from hf_prune.latency import compare_latency, measure_decode_latency

RESULTS = Path(__file__).resolve().parent / "results"


def _smoke_models() -> dict:
    """Tiny random stand-ins, seeded so that every smoke run measures the same models."""

    def llama() -> tuple:
        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=256,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=16,
        )
        return transformers.LlamaForCausalLM(config), None

    def bert() -> tuple:
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8
        )
        return transformers.BertModel(config), None

    return {"minilm": bert, "smollm2": llama}


def run(loader, name: str, fraction: float, batch_sizes: list[int], seq_len: int, repeats: int, device: str) -> dict:
    dense, _ = loader()
    dense = dense.to(device).eval()
    pruned = copy.deepcopy(dense).cpu()
    report = hf_prune.prune(pruned, heads=fraction, neurons=fraction, importance="magnitude", reconstruct=False)
    with tempfile.TemporaryDirectory() as tmp:
        hf_prune.save_pretrained(pruned, Path(tmp) / "pruned")
        pruned = hf_prune.from_pretrained(Path(tmp) / "pruned").to(device).eval()
    decoder = type(dense).__name__.endswith("ForCausalLM")
    rows = []
    for batch in batch_sizes:
        dense_latency, pruned_latency = compare_latency(dense, pruned, batch, seq_len, repeats)
        row = {
            "batch_size": batch,
            "seq_len": seq_len,
            "forward_dense_ms": dense_latency.median_ms,
            "forward_pruned_ms": pruned_latency.median_ms,
            "forward_speedup": dense_latency.median_ms / pruned_latency.median_ms,
            "forward_dense_tokens_per_s": batch * seq_len / dense_latency.median_ms * 1000,
            "forward_pruned_tokens_per_s": batch * seq_len / pruned_latency.median_ms * 1000,
        }
        if decoder:
            dense_step = measure_decode_latency(dense, batch, seq_len, repeats=max(1, repeats // 5))
            pruned_step = measure_decode_latency(pruned, batch, seq_len, repeats=max(1, repeats // 5))
            row.update(
                decode_dense_ms=dense_step.median_ms,
                decode_pruned_ms=pruned_step.median_ms,
                decode_speedup=dense_step.median_ms / pruned_step.median_ms,
                decode_dense_tokens_per_s=batch / dense_step.median_ms * 1000,
                decode_pruned_tokens_per_s=batch / pruned_step.median_ms * 1000,
            )
        rows.append(row)
    return {
        "model": name,
        "fraction": fraction,
        "parameters_dense": report.before.parameters,
        "parameters_pruned": report.after.parameters,
        "flops_ratio": report.flops_ratio,
        "vanilla_loadable": report.vanilla_loadable,
        "layers_after": report.layers_after[0],
        "rows": rows,
    }


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len({r["model"] for r in results}), figsize=(11, 4), squeeze=False)
    for ax, model in zip(axes[0], sorted({r["model"] for r in results}), strict=False):
        mine = [r for r in results if r["model"] == model]
        flops = [r["flops_ratio"] for r in mine]
        ax.plot(flops, flops, "k--", label="FLOPs ratio (ideal)")
        for batch in sorted({row["batch_size"] for r in mine for row in r["rows"]}):
            speed = [next(x["forward_speedup"] for x in r["rows"] if x["batch_size"] == batch) for r in mine]
            ax.plot(flops, speed, "o-", label=f"forward, batch {batch}")
            decode = [next(x.get("decode_speedup") for x in r["rows"] if x["batch_size"] == batch) for r in mine]
            if all(d is not None for d in decode):
                ax.plot(flops, decode, "s:", label=f"decode step, batch {batch}")
        ax.set_title(model)
        ax.set_xlabel("FLOPs ratio dense / pruned")
        ax.set_ylabel("measured speedup")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=sorted(MODELS))
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny random models, a few seconds")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    models = _smoke_models() if args.smoke else MODELS
    if args.smoke:
        args.batch_sizes, args.seq_len, args.repeats, args.fractions = [2], 16, 2, [0.5]

    device = torch.device(args.device)
    results = [
        run(models[model], model, fraction, args.batch_sizes, args.seq_len, args.repeats, args.device)
        for model in args.models
        for fraction in args.fractions
    ]
    meta = run_meta(args.smoke, device)
    output = args.output or RESULTS / f"speed-{'smoke' if args.smoke else device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    plot(results, output.with_suffix(".png"), f"{meta['device']}, torch {meta['torch']}")
    print(f"{meta['device']}, torch {meta['torch']}, transformers {meta['transformers']}")
    header = "model | removed | params | batch | forward ms dense -> pruned | speedup | decode speedup | FLOPs ratio"
    print(f"| {header} | efficiency |\n|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for row in r["rows"]:
            decode = f"{row['decode_speedup']:.2f}" if "decode_speedup" in row else "-"
            print(
                f"| {r['model']} | {r['fraction']:.0%} | {r['parameters_dense'] / 1e6:.1f}M -> "
                f"{r['parameters_pruned'] / 1e6:.1f}M | {row['batch_size']} | {row['forward_dense_ms']:.1f} -> "
                f"{row['forward_pruned_ms']:.1f} | {row['forward_speedup']:.2f} | {decode} | {r['flops_ratio']:.2f} | "
                f"{row['forward_speedup'] / r['flops_ratio']:.2f} |"
            )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
