"""Cost of PruningCallback per training step, against the same Trainer without it.

    python benchmarks/callback_overhead.py --steps 40

MiniLM-L6 with a classification head, batch 32 x 64 tokens of random ids. The pruning schedule is kept
running for the whole measurement (masks on, scores accumulating, masks recomputed every 10 steps) so the
figure is the overhead while masking, the most expensive phase. Median step time over the last steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_minilm

import hf_prune
from hf_prune.latency import device_name


class StepTimer(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def step_time(importance: str | None, steps: int, output: Path) -> float:
    model, _ = load_minilm(num_labels=2)
    ids = torch.randint(1000, 20000, (steps * 32, 64), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})
    timer = StepTimer()
    callbacks: list[transformers.TrainerCallback] = [timer]
    if importance:
        config = hf_prune.PruningConfig(flops=0.4, importance=importance, begin=0, end=steps, update_every=10)
        callbacks.insert(0, hf_prune.PruningCallback(config))
    args = transformers.TrainingArguments(
        output_dir=str(output),
        max_steps=steps,
        per_device_train_batch_size=32,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=1000,
        use_cpu=not torch.cuda.is_available(),
    )
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train()
    return statistics.median(timer.times[5:])  # skip warm-up steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--importances", nargs="+", default=["magnitude", "taylor", "fisher", "activation"])
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    scratch = Path("/tmp/hf_prune_overhead")
    baseline = step_time(None, args.steps, scratch)
    rows = {"plain Trainer": baseline}
    for importance in args.importances:
        rows[importance] = step_time(importance, args.steps, scratch)
    device = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"{device}; MiniLM-L6, batch 32 x 64 tokens; median step time over {args.steps - 5} steps")
    print("| run | step (ms) | overhead |")
    print("|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds * 1000:.0f} | {seconds / baseline - 1:+.1%} |")
    args.output.mkdir(parents=True, exist_ok=True)
    result = {"device": device, "steps": args.steps, "step_seconds": rows, "command": "python " + " ".join(sys.argv)}
    (args.output / "callback_overhead.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
