"""SmolLM2-135M in llama.cpp after pruning: does the GGUF export compute what PyTorch computes, and how fast is it?

    python benchmarks/export_llama_cpp.py            # needs llama-cpp-python: pip install -e ".[llama-cpp]"

Layouts: dense; "uniform", 25% of the heads and neurons removed in every layer (llama.cpp architecture `llama`);
"global", the same totals ranked across layers (per-layer counts: architecture `deci`). Pruned with Fisher scores
calibrated on windows of other plays, no reconstruction. Each is saved, exported to GGUF at f32, f16 and q8_0, and
loaded in llama.cpp: perplexity on Hamlet windows (the same token ids in both runtimes, PyTorch in fp32), and
llama.cpp's prompt-processing and generation tokens/s on --threads threads (medians of --repeats runs in which
the layouts take turns). Writes
benchmarks/results/export_llama_cpp.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_smollm2
from quality_decoder import CALIBRATION_PLAYS, EVALUATION_PLAY, shakespeare, windows
from reporting import run_meta

import hf_prune

RESULTS = Path(__file__).resolve().parent / "results"
OUTTYPES = ("f32", "f16", "q8_0")


def token_windows(tokenizer: Any, texts: list[str], length: int, count: int) -> list[list[int]]:
    """Evenly spaced windows of token ids (the evaluation windows of quality_decoder.py)."""
    return [w["input_ids"][0].tolist() for w in windows(tokenizer, texts, length, count)]


def _nll(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    """Negative log-likelihood of ``ids[1:]`` under the logits of the positions before them."""
    logits = logits[:-1].astype(np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return -log_probs[np.arange(len(ids) - 1), ids[1:]]


@torch.inference_mode()
def torch_perplexity(model: torch.nn.Module, token_ids: list[list[int]]) -> float:
    nll = [_nll(model.eval()(torch.tensor([ids])).logits[0].numpy(), ids) for ids in token_ids]
    return float(math.exp(np.concatenate(nll).mean()))


def llama_cpp_model(path: Path, n_ctx: int, threads: int, all_logits: bool) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, logits_all=all_logits, verbose=False
    )


def llama_cpp_perplexity(path: Path, token_ids: list[list[int]], threads: int) -> float:
    """Perplexity in llama.cpp on the same token ids, computed as :func:`torch_perplexity` does."""
    llm = llama_cpp_model(path, max(len(ids) for ids in token_ids), threads, all_logits=True)
    nll = []
    for ids in token_ids:
        llm.reset()
        llm.eval(ids)
        nll.append(_nll(np.asarray(llm.scores[: len(ids)]), ids))
    return float(math.exp(np.concatenate(nll).mean()))


def llama_cpp_speed(paths: dict[str, Path], prompt: list[int], generate: int, threads: int, repeats: int) -> dict:
    """Median prompt-processing tokens/s (one batch of ``prompt``) and generation tokens/s (one token per step) of
    each file. The files take turns within each repeat, so that a slow spell of a shared machine hits all of them."""
    models = {
        name: llama_cpp_model(path, len(prompt) + generate + 1, threads, all_logits=False)
        for name, path in paths.items()
    }
    runs: dict[str, dict[str, list[float]]] = {name: {"prompt": [], "generation": []} for name in models}
    for llm in models.values():
        llm.eval(prompt[:8])  # warm-up
    for _ in range(repeats):
        for name, llm in models.items():
            llm.reset()
            start = time.perf_counter()
            llm.eval(prompt)
            runs[name]["prompt"].append(len(prompt) / (time.perf_counter() - start))
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            start = time.perf_counter()
            for _ in range(generate):
                llm.eval([token])
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            runs[name]["generation"].append(generate / (time.perf_counter() - start))
    return {
        name: {
            "prompt_tokens_per_s": statistics.median(r["prompt"]),
            "generation_tokens_per_s": statistics.median(r["generation"]),
            "prompt_runs": r["prompt"],
            "generation_runs": r["generation"],
        }
        for name, r in runs.items()
    }


def prune_layouts(dense: torch.nn.Module, calibration: list, fraction: float) -> dict[str, torch.nn.Module]:
    """The dense model and its uniform and global prunings at ``fraction`` of heads and neurons."""
    fisher = hf_prune.calibrate(copy.deepcopy(dense), calibration, "fisher")
    models = {"dense": dense}
    for ranking in ("uniform", "global"):
        model = copy.deepcopy(dense)
        hf_prune.prune(model, heads=fraction, neurons=fraction, importance=fisher, ranking=ranking, reconstruct=False)
        models[ranking] = model
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.25, help="heads and neurons removed")
    parser.add_argument("--window", type=int, default=256, help="tokens per perplexity window")
    parser.add_argument("--eval-windows", type=int, default=4)
    parser.add_argument("--calibration-windows", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--generate", type=int, default=32, help="tokens generated for the generation speed")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per file (median)")
    parser.add_argument("--outtypes", nargs="*", default=list(OUTTYPES))
    parser.add_argument("--output", type=Path, default=RESULTS / "export_llama_cpp.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense, tokenizer = load_smollm2(plain=True)
    evaluation = token_windows(tokenizer, [shakespeare(EVALUATION_PLAY)], args.window, args.eval_windows)
    calibration = windows(tokenizer, [shakespeare(p) for p in CALIBRATION_PLAYS], args.window, args.calibration_windows)
    dense_cost = hf_prune.measure_cost(hf_prune.ModelStructure(dense))
    results: dict[str, Any] = {"meta": run_meta(False), "settings": vars(args) | {"output": str(args.output)}}
    results["layouts"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in prune_layouts(dense, calibration, args.fraction).items():
            cost = hf_prune.measure_cost(hf_prune.ModelStructure(model))
            entry: dict[str, Any] = {
                "parameter_ratio": cost.parameters / dense_cost.parameters,
                "flops_ratio": dense_cost.flops_per_token / cost.flops_per_token,
                "layers": [dict(s.counts) for s in hf_prune.ModelStructure(model).shapes()],
                "torch_perplexity": torch_perplexity(model, evaluation),
                "gguf": {},
            }
            folder = Path(tmp) / name
            hf_prune.save_pretrained(model, folder, tokenizer=tokenizer)
            for outtype in args.outtypes:
                path = Path(tmp) / f"{name}-{outtype}.gguf"
                info = hf_prune.export_checkpoint(folder, path, "gguf", outtype=outtype, record=False)
                ppl = llama_cpp_perplexity(path, evaluation, args.threads)
                entry["gguf"][outtype] = {
                    "arch": info["arch"],
                    "file_mb": path.stat().st_size / 2**20,
                    "llama_cpp_perplexity": ppl,
                    "relative_to_torch": ppl / entry["torch_perplexity"] - 1,
                }
                print(f"{name} {outtype}: {json.dumps(entry['gguf'][outtype])}", flush=True)
            results["layouts"][name] = entry
            print(f"{name}: torch perplexity {entry['torch_perplexity']:.3f}", flush=True)
        for outtype in args.outtypes:
            paths = {name: Path(tmp) / f"{name}-{outtype}.gguf" for name in results["layouts"]}
            speeds = llama_cpp_speed(paths, evaluation[0], args.generate, args.threads, args.repeats)
            for name, figures in speeds.items():
                results["layouts"][name]["gguf"][outtype].update(figures)
                print(f"{name} {outtype}: {figures['prompt_tokens_per_s']:.1f} prompt tokens/s, "
                      f"{figures['generation_tokens_per_s']:.1f} generated tokens/s", flush=True)  # fmt: skip
    dense_speed = results["layouts"]["dense"]["gguf"]
    for entry in results["layouts"].values():
        for outtype, figures in entry["gguf"].items():
            for key in ("prompt_tokens_per_s", "generation_tokens_per_s"):
                speedup = figures[key] / dense_speed[outtype][key]
                figures[key.replace("tokens_per_s", "speedup")] = speedup
                figures[key.replace("tokens_per_s", "efficiency")] = speedup / entry["flops_ratio"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
