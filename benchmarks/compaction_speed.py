"""Does pruning during fine-tuning get cheaper than not pruning? Wall time of one fine-tune, with PruningCallback
masking only, with compaction (``compact=True``), and without pruning, all in one process, in alternating order.

    python benchmarks/compaction_speed.py --epochs 1 --flops 0.6 0.4

MiniLM-L6 (all-MiniLM-L6-v2, new classification head) on Rotten Tomatoes, batch 32, up to 64 tokens, Taylor
importance, cubic schedule ending at 70% of training, an update every 10 steps. Every run starts from the same
weights and seed; accuracy is on the 1,000 held-out reviews. Results go to results/compaction_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_minilm, rotten_tomatoes
from reporting import run_meta

import hf_prune


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def one_run(base: torch.nn.Module, data: tuple, collator, args, flops: float | None, compact: bool) -> dict:
    """Fine-tune a copy of ``base`` for ``args.epochs``; prune ``flops`` of the block FLOPs on the way if given."""
    transformers.set_seed(args.seed)
    model = copy.deepcopy(base)
    train, test = data
    training = transformers.TrainingArguments(
        output_dir=str(args.scratch),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=1e-4,
        warmup_steps=20,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        disable_tqdm=True,
        use_cpu=True,
    )
    callbacks = []
    if flops is not None:
        config = hf_prune.PruningConfig(flops=flops, importance="taylor", end=0.7, update_every=10, compact=compact)
        callbacks.append(hf_prune.PruningCallback(config))
    trainer = transformers.Trainer(
        model=model,
        args=training,
        train_dataset=train,
        data_collator=collator,
        compute_metrics=accuracy,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    row = {
        "run": "dense" if flops is None else f"{'compact' if compact else 'masked'} {flops:.0%}",
        "flops_target": flops,
        "compact": compact,
        "train_seconds": round(seconds, 1),
        "accuracy": trainer.evaluate(test)["eval_accuracy"],
        "steps": trainer.state.global_step,
    }
    if callbacks:
        report = callbacks[0].report
        row["block_flops_removed"] = round(
            1 - report.after.block_flops_per_token / report.before.block_flops_per_token, 4
        )
        row["parameters_after"] = report.after.parameters
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--flops", type=float, nargs="+", default=[0.6, 0.4])
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sequence, reversed every other round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-samples", type=int, default=None, help="smoke runs")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/hf_prune_compaction_speed"))
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    base, tokenizer = load_minilm(num_labels=2)
    data = rotten_tomatoes(tokenizer, args.seed, args.max_train_samples)
    collator = transformers.DataCollatorWithPadding(tokenizer)
    sequence: list[tuple[float | None, bool]] = [(None, False)]
    for flops in args.flops:
        sequence += [(flops, False), (flops, True)]
    rows = []
    for round_index in range(args.rounds):
        order = sequence if round_index % 2 == 0 else sequence[::-1]
        rows += [one_run(base, data, collator, args, flops, compact) for flops, compact in order]

    dense = np.mean([r["train_seconds"] for r in rows if r["flops_target"] is None])
    print("\n| run | train (s) | vs dense | accuracy | block FLOPs removed |\n|---|---|---|---|---|")
    for row in rows:
        removed = row.get("block_flops_removed")
        print(
            f"| {row['run']} | {row['train_seconds']:.0f} | {row['train_seconds'] / dense:.2f}x | "
            f"{row['accuracy']:.1%} | {'-' if removed is None else f'{removed:.0%}'} |"
        )
    result = {
        **run_meta(smoke=bool(args.max_train_samples)),
        "threads": torch.get_num_threads(),
        "epochs": args.epochs,
        "train_samples": len(data[0]),
        "rows": rows,
    }
    if not args.max_train_samples:
        args.output.mkdir(parents=True, exist_ok=True)
        path = args.output / "compaction_speed.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)


if __name__ == "__main__":
    main()
