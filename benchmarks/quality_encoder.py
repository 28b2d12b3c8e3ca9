"""MiniLM-L6 on Rotten Tomatoes: accuracy after one-shot pruning (no retraining), per importance criterion.

    python benchmarks/quality_encoder.py            # needs outputs/minilm-dense (benchmarks/gradual_minilm.sh)
    python benchmarks/quality_encoder.py --smoke           # tiny random BERT, seconds (CI)
    python benchmarks/quality_encoder.py --default-path --targets 0.4 0.6   # the default one-shot path vs TP

The dense model is the fine-tuned one from the gradual benchmark (same seed, same 1,000 held-out reviews).
Each criterion prunes a copy to 25/40/50/60% fewer attention+MLP FLOPs, ranked globally, calibrated on 32
training batches where it needs data; the gradual results (with recovery) are read from
benchmarks/results/minilm_gradual.jsonl when present. Torch-Pruning prunes to the per-layer counts of hf_prune's
uniform plan with its own magnitude and Taylor criteria, next to hf_prune at exactly those counts.
Writes benchmarks/results/quality_encoder.json and quality_encoder.png.

``--default-path`` measures what ``hf_prune.prune(model, flops=F, calibration=batches)`` does by default instead
(Fisher scores from the labelled batches, uniform ranking as PruningConfig's default, or ``--ranking global``;
block-by-block removal with bias compensation and the weight refit), the same without reconstruction, and
Torch-Pruning at the default path's per-layer counts with its own Taylor scores (it has no reconstruction).
Differences come with a paired standard error over the same 1,000
reviews. Writes benchmarks/results/quality_encoder_default.json.
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
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import minilm_dir, rotten_tomatoes
from reporting import plot_curves, run_meta

import hf_prune

RESULTS = Path(__file__).resolve().parent / "results"
CRITERIA = ["magnitude", "taylor", "fisher", "activation", "random"]


@torch.inference_mode()
def correct(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """1.0 where the model classifies a held-out review right, else 0.0 (for paired comparisons)."""
    model.eval()
    hits = []
    for batch in batches:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        hits.append((logits.argmax(-1) == batch["labels"]).float())
    return torch.cat(hits)


def accuracy(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    return float(correct(model, batches).mean())


def paired(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Accuracy of ``a`` minus that of ``b`` on the same examples, with its standard error."""
    diff = a - b
    return {"difference": float(diff.mean()), "se": float(diff.std(unbiased=True) / len(diff) ** 0.5)}


def default_path(
    dense: torch.nn.Module,
    calibration: list,
    evaluation: list,
    targets: list[float],
    smoke: bool,
    ranking: str = "uniform",
) -> dict[str, Any]:
    """The default one-shot path, its no-reconstruction ablation and Torch-Pruning at its counts, paired."""
    from peer_torch_pruning import prune_minilm_tp

    dense_hits = correct(dense, evaluation)
    points = []
    for flops in targets:
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        report = hf_prune.prune(model, flops=flops, calibration=calibration, ranking=ranking, neuron_multiple=1)
        seconds = time.perf_counter() - start
        ours = correct(model, evaluation)
        removed = 1 - report.after.block_flops_per_token / report.before.block_flops_per_token
        summary = {k: v for k, v in report.extra.get("reconstruction", {}).items() if k != "per_block"}
        common = {"target": flops, "flops_removed": removed}
        points.append(
            common
            | {
                "method": f"hf_prune default ({report.config['importance']}, reconstruction)",
                "accuracy": float(ours.mean()),
                "vs_dense": paired(ours, dense_hits),
                "prune_seconds": round(seconds, 1),
                "layers_after": report.layers_after,
                "reconstruction_summary": summary,
            }
        )
        bare = copy.deepcopy(dense)
        hf_prune.prune(
            bare, flops=flops, calibration=calibration, ranking=ranking, neuron_multiple=1, reconstruct=False
        )
        peer = prune_minilm_tp(copy.deepcopy(dense), report.layers_after, "taylor", calibration)
        for method, other in (
            ("hf_prune, no reconstruction", bare),
            ("Torch-Pruning taylor, at hf_prune's counts", peer),
        ):
            hits = correct(other, evaluation)
            points.append(
                common | {"method": method, "accuracy": float(hits.mean()), "default_minus": paired(ours, hits)}
            )
        for point in points[-3:]:
            print(json.dumps({k: v for k, v in point.items() if k not in ("layers_after", "reconstruction_summary")}))
    return {"dense_accuracy": float(dense_hits.mean()), "points": points}


def batches_of(dataset: Any, tokenizer: Any, size: int, limit: int | None = None) -> list[dict[str, torch.Tensor]]:
    collator = transformers.DataCollatorWithPadding(tokenizer)
    rows = [dataset[i] for i in range(len(dataset) if limit is None else min(limit * size, len(dataset)))]
    return [collator(rows[i : i + size]) for i in range(0, len(rows), size)]


def one_shot(dense: torch.nn.Module, criterion: str, flops: float, calibration: list) -> tuple[Any, Any]:
    model = copy.deepcopy(dense)
    importance = hf_prune.calibrate(model, calibration, criterion)
    report = hf_prune.prune(
        model, flops=flops, importance=importance, ranking="global", neuron_multiple=1, reconstruct=False
    )
    return model, report


def peer_curves(dense: torch.nn.Module, calibration: list, evaluation: list, targets: list[float]) -> dict:
    """Torch-Pruning and hf_prune at the same per-layer head and neuron counts (hf_prune's uniform plan for each
    target), each with its own magnitude and Taylor criteria: the comparison isolates which heads and neurons
    each tool keeps."""
    from peer_torch_pruning import prune_minilm_tp

    curves: dict[str, list] = {}
    for importance in ("magnitude", "taylor"):
        ours, theirs = [], []
        for flops in targets:
            model = copy.deepcopy(dense)
            scores = hf_prune.calibrate(model, calibration, importance)
            report = hf_prune.prune(model, flops=flops, importance=scores, neuron_multiple=1, reconstruct=False)
            removed = 1 - report.after.block_flops_per_token / report.before.block_flops_per_token
            ours.append({"target": flops, "flops_removed": removed, "accuracy": accuracy(model, evaluation)})
            model = prune_minilm_tp(copy.deepcopy(dense), report.layers_after, importance, calibration)
            theirs.append({"target": flops, "flops_removed": removed, "accuracy": accuracy(model, evaluation)})
            print(
                f"same counts, {importance}, {removed:.0%} FLOPs removed: hf_prune {ours[-1]['accuracy']:.1%}, "
                f"Torch-Pruning {theirs[-1]['accuracy']:.1%}"
            )
        curves[f"hf_prune {importance}, one-shot, uniform"] = ours
        curves[f"Torch-Pruning {importance}, one-shot, uniform"] = theirs
    return curves


def plot(data: dict[str, Any], path: Path) -> None:
    plot_curves(
        data,
        path,
        x="flops_removed",
        y="accuracy",
        xlabel="fraction of attention+MLP FLOPs removed",
        ylabel="accuracy (1,000 held-out reviews)",
        title="MiniLM-L6 fine-tuned on Rotten Tomatoes: one-shot (global/uniform ranking) and gradual",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense-dir", type=Path, default=Path("outputs/minilm-dense"))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.25, 0.4, 0.5, 0.6])
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument("--calibration-batches", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default-path", action="store_true", help="the default one-shot path vs Torch-Pruning")
    parser.add_argument("--ranking", default="uniform", help="ranking of --default-path (PruningConfig's default)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the existing JSON")
    args = parser.parse_args()
    if args.replot:
        name = "quality_encoder-smoke" if args.smoke else "quality_encoder"
        plot(json.loads((RESULTS / f"{name}.json").read_text()), RESULTS / f"{name}.png")
        return

    if args.smoke:
        config = transformers.BertConfig(
            vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        )
        torch.manual_seed(args.seed)  # the same tiny model in every smoke run
        dense = transformers.BertForSequenceClassification(config)
        tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
        args.targets, args.calibration_batches = [0.4], 2
    else:
        dense = transformers.AutoModelForSequenceClassification.from_pretrained(args.dense_dir)
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.dense_dir)
    train, test = rotten_tomatoes(tokenizer, args.seed, 64 if args.smoke else None)
    calibration = batches_of(train.shuffle(seed=args.seed), tokenizer, 32, args.calibration_batches)
    evaluation = batches_of(test, tokenizer, 64)
    if args.default_path:
        data = default_path(dense, calibration, evaluation, args.targets, args.smoke, args.ranking)
        data["meta"] = run_meta(args.smoke) | {
            "calibration_batches": args.calibration_batches,
            "seed": args.seed,
            "ranking": args.ranking,
        }
        name = "quality_encoder_default-smoke" if args.smoke else "quality_encoder_default"
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
        return
    data: dict[str, Any] = {"dense_accuracy": accuracy(dense, evaluation), "curves": {}}

    for criterion in args.criteria:
        points = []
        for flops in args.targets:
            model, report = one_shot(dense, criterion, flops, calibration)
            removed = 1 - report.after.block_flops_per_token / report.before.block_flops_per_token
            points.append({"target": flops, "flops_removed": removed, "accuracy": accuracy(model, evaluation)})
            print(f"{criterion:>10} one-shot, {removed:.0%} FLOPs removed: {points[-1]['accuracy']:.1%}")
        data["curves"][f"hf_prune {criterion}, one-shot, global"] = points

    gradual = RESULTS / "minilm_gradual.jsonl"
    if gradual.is_file() and not args.smoke:
        for line in gradual.read_text().splitlines():
            run = json.loads(line)
            name = f"hf_prune {run['importance']}, gradual{' + distillation' if run['distill'] else ''}"
            point = {"target": run["flops_target"], "flops_removed": run["block_flops_removed"]}
            data["curves"].setdefault(name, []).append({**point, "accuracy": run["pruned_accuracy"]})

    data["curves"].update(peer_curves(dense, calibration, evaluation, args.targets))

    data["meta"] = run_meta(args.smoke) | {"calibration_batches": args.calibration_batches, "seed": args.seed}
    name = "quality_encoder-smoke" if args.smoke else "quality_encoder"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, RESULTS / f"{name}.png")
    print(f"dense accuracy {data['dense_accuracy']:.1%}; wrote {RESULTS / name}.json")


if __name__ == "__main__":
    main()
