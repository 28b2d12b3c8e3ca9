"""MiniLM-L6 in ONNX Runtime after pruning: latency of the exported graphs, dense against pruned.

    python benchmarks/export_onnx_runtime.py            # a few minutes on one CPU core
    python benchmarks/export_onnx_runtime.py --smoke    # tiny random BERT, seconds

Layouts: dense; "uniform", --fraction of the heads and neurons removed in every layer; "global", the same
fractions ranked across layers with layer 0 protected (per-layer counts). Magnitude scores, no calibration: latency
depends on the shapes, not on which heads go. Each is saved, exported with `hf-prune export --format onnx` (checked
against PyTorch there) and timed in ONNX Runtime on --threads threads: median of --repeats runs of random token ids
at each batch size.
Writes benchmarks/results/export_onnx_runtime.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_minilm
from reporting import run_meta

import hf_prune

RESULTS = Path(__file__).resolve().parent / "results"


def tiny_bert() -> tuple[Any, None]:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
    )
    return transformers.BertModel(config).eval(), None


def ort_latency(path: Path, batch: int, seq_len: int, vocab: int, repeats: int, threads: int) -> float:
    """Median milliseconds of one ONNX Runtime run on random ids (after one warm-up run)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, vocab, (batch, seq_len), dtype=np.int64)
    values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feeds = {i.name: values[i.name] for i in session.get_inputs()}
    session.run(None, feeds)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.5, help="heads and neurons removed")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--smoke", action="store_true", help="tiny random BERT, 2 repeats")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.seq_len = 2, 16
    output = args.output or RESULTS / ("export_onnx_runtime_smoke.json" if args.smoke else "export_onnx_runtime.json")
    dense, _ = tiny_bert() if args.smoke else load_minilm()
    dense_cost = hf_prune.measure_cost(hf_prune.ModelStructure(dense), seq_len=args.seq_len)
    results: dict[str, Any] = {"meta": run_meta(args.smoke), "settings": vars(args) | {"output": str(output)}}
    results["layouts"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("dense", "uniform", "global"):
            model = copy.deepcopy(dense)
            if name != "dense":
                protected = [0] if name == "global" else []  # per-layer counts even where scores are flat
                hf_prune.prune(
                    model, heads=args.fraction, neurons=args.fraction, ranking=name, protected_layers=protected,
                    importance="magnitude", reconstruct=False,
                )  # fmt: skip
            cost = hf_prune.measure_cost(hf_prune.ModelStructure(model), seq_len=args.seq_len)
            folder, path = Path(tmp) / name, Path(tmp) / f"{name}.onnx"
            hf_prune.save_pretrained(model, folder)
            info = hf_prune.export_checkpoint(folder, path, "onnx", record=False)
            rows = []
            for batch in args.batch_sizes:
                ms = ort_latency(path, batch, args.seq_len, dense.config.vocab_size, args.repeats, args.threads)
                rows.append({"batch_size": batch, "median_ms": ms})
            results["layouts"][name] = {
                "parameter_ratio": cost.parameters / dense_cost.parameters,
                "flops_ratio": dense_cost.flops_per_token / cost.flops_per_token,
                "max_abs_diff_vs_torch": info["max_abs_diff"],
                "layers": [dict(s.counts) for s in hf_prune.ModelStructure(model).shapes()],
                "rows": rows,
            }
            print(f"{name}: {json.dumps(results['layouts'][name]['rows'])}", flush=True)
    dense_rows = {r["batch_size"]: r["median_ms"] for r in results["layouts"]["dense"]["rows"]}
    for entry in results["layouts"].values():
        for row in entry["rows"]:
            row["speedup"] = dense_rows[row["batch_size"]] / row["median_ms"]
            row["efficiency"] = row["speedup"] / entry["flops_ratio"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
