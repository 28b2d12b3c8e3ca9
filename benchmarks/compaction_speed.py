"""Does pruning during fine-tuning get cheaper than not pruning? Wall time of one fine-tune, with PruningCallback
masking only, with compaction (``compact=True``), and without pruning, all in one process, in alternating order.

    python benchmarks/compaction_speed.py --epochs 1 --flops 0.6 0.4                    # MiniLM, Rotten Tomatoes
    python benchmarks/compaction_speed.py --task smollm2 --steps 48 --params 0.3        # SmolLM2, recovery run

``minilm``: MiniLM-L6 (all-MiniLM-L6-v2, new classification head) on Rotten Tomatoes, batch 32, up to 64 tokens;
accuracy on the 1,000 held-out reviews. ``smollm2``: SmolLM2-135M, a short causal-LM run on windows of four
Shakespeare plays (batch 4 x 128 tokens); perplexity on Hamlet and on modern prose (IMDB reviews), both held out.
Taylor importance, cubic schedule ending at 70% of training. Every run starts from the same weights and seed.
Results go to results/compaction_speed[_smollm2].json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_minilm, load_smollm2, rotten_tomatoes
from reporting import run_meta

import hf_prune


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


@dataclass
class Task:
    """A model, its training data and how to judge the result."""

    base: torch.nn.Module
    train: Any
    collator: Any
    evaluate: Callable[[transformers.Trainer, torch.nn.Module], dict[str, float]]
    training: dict[str, Any]
    update_every: int


def minilm_task(args: argparse.Namespace) -> Task:
    base, tokenizer = load_minilm(num_labels=2)
    train, test = rotten_tomatoes(tokenizer, args.seed, args.max_train_samples)
    training = {"num_train_epochs": args.epochs, "per_device_train_batch_size": 32, "learning_rate": 1e-4}
    return Task(
        base,
        train,
        transformers.DataCollatorWithPadding(tokenizer),
        lambda trainer, model: {"accuracy": trainer.evaluate(test)["eval_accuracy"]},
        training,
        update_every=10,
    )


def smollm2_task(args: argparse.Namespace) -> Task:
    from datasets import Dataset
    from quality_decoder import CALIBRATION_PLAYS, EVALUATION_PLAY, shakespeare, windows
    from quality_oneshot import imdb_texts, perplexity

    base, tokenizer = load_smollm2(plain=True)
    batch, steps = 4, args.steps
    texts = [shakespeare(name) for name in CALIBRATION_PLAYS]
    train = Dataset.from_list(
        [{k: v[0].tolist() for k, v in w.items()} for w in windows(tokenizer, texts, 128, batch * steps)]
    )
    held_out = {
        "hamlet": windows(tokenizer, [shakespeare(EVALUATION_PLAY)], 256, 16),
        "prose": windows(tokenizer, imdb_texts(200), 256, 16),
    }

    def evaluate(trainer: transformers.Trainer, model: torch.nn.Module) -> dict[str, float]:
        return {f"{name}_ppl": round(perplexity(model, batches)["ppl"], 2) for name, batches in held_out.items()}

    training = {"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": 5e-5}
    return Task(base, train, transformers.default_data_collator, evaluate, training, update_every=4)


TASKS = {"minilm": minilm_task, "smollm2": smollm2_task}


def one_run(task: Task, args: argparse.Namespace, target: float | None, compact: bool) -> dict:
    """Fine-tune a copy of the task's model; prune ``target`` of the blocks' FLOPs (or parameters) on the way."""
    transformers.set_seed(args.seed)
    model = copy.deepcopy(task.base)
    training = transformers.TrainingArguments(
        output_dir=str(args.scratch),
        per_device_eval_batch_size=64,
        warmup_steps=min(20, task.training.get("max_steps", 20) // 4),
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        disable_tqdm=True,
        use_cpu=True,
        **task.training,
    )
    callbacks = []
    measure = "params" if args.params else "flops"
    if target is not None:
        config = hf_prune.PruningConfig(
            **{measure: target}, importance="taylor", end=0.7, update_every=task.update_every, compact=compact
        )
        callbacks.append(hf_prune.PruningCallback(config))
    trainer = transformers.Trainer(
        model=model,
        args=training,
        train_dataset=task.train,
        data_collator=task.collator,
        compute_metrics=accuracy if args.task == "minilm" else None,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    row = {
        "run": "dense" if target is None else f"{'compact' if compact else 'masked'} {target:.0%}",
        "target": None if target is None else {measure: target},
        "compact": compact,
        "train_seconds": round(seconds, 1),
        **task.evaluate(trainer, model),
        "steps": trainer.state.global_step,
    }
    if callbacks:
        report = callbacks[0].report
        row["block_flops_removed"] = round(
            1 - report.after.block_flops_per_token / report.before.block_flops_per_token, 4
        )
        row["block_parameters_removed"] = round(1 - report.after.block_parameters / report.before.block_parameters, 4)
        row["parameters_after"] = report.after.parameters
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="minilm")
    parser.add_argument("--epochs", type=float, default=1.0, help="minilm: epochs")
    parser.add_argument("--steps", type=int, default=48, help="smollm2: optimizer steps")
    parser.add_argument("--flops", type=float, nargs="+", default=[0.6, 0.4], help="block-FLOPs targets")
    parser.add_argument("--params", type=float, nargs="+", default=None, help="block-parameter targets instead")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sequence, reversed every other round")
    parser.add_argument("--reverse", action="store_true", help="start with the reversed sequence (dense last)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-samples", type=int, default=None, help="minilm smoke runs")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/hf_prune_compaction_speed"))
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    task = TASKS[args.task](args)
    sequence: list[tuple[float | None, bool]] = [(None, False)]
    for target in args.params or args.flops:
        sequence += [(target, False), (target, True)]
    rows = []
    for round_index in range(args.rounds):
        order = sequence if (round_index + args.reverse) % 2 == 0 else sequence[::-1]
        rows += [one_run(task, args, target, compact) for target, compact in order]

    dense = np.mean([r["train_seconds"] for r in rows if r["target"] is None])
    quality = [k for k in rows[0] if k == "accuracy" or k.endswith("_ppl")]
    print(f"\n| run | train (s) | vs dense | {' | '.join(quality)} |\n|---|---|---|{'---|' * len(quality)}")
    for row in rows:
        figures = " | ".join(str(row[k]) for k in quality)
        print(f"| {row['run']} | {row['train_seconds']:.0f} | {row['train_seconds'] / dense:.2f}x | {figures} |")
    result = {
        **run_meta(smoke=bool(args.max_train_samples)),
        "task": args.task,
        "threads": torch.get_num_threads(),
        "train_examples": len(task.train),
        "rows": rows,
    }
    if not args.max_train_samples:
        args.output.mkdir(parents=True, exist_ok=True)
        task = "" if args.task == "minilm" else f"_{args.task}"
        name = f"compaction_speed{task}{'_reversed' if args.reverse else ''}.json"
        path = args.output / name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)


if __name__ == "__main__":
    main()
