"""Cost of PruningCallback per training step, against the same Trainer without it.

    python benchmarks/callback_overhead.py --steps 40 --rounds 3

MiniLM-L6 with a classification head, batch 32 x 64 tokens of random ids. The pruning schedule is kept
running for the whole measurement (masks on, scores accumulating, masks recomputed every 10 steps) so the
figure is the overhead while masking, the most expensive phase. Mean step time over the last steps of each
run (the update steps included). The runs alternate (plain, then each criterion, ``--rounds`` times) so that a
slow drift of the machine falls on every row alike; each row reports the median over its rounds of the ratio
to the plain run of the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
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
    # Mean, not median: the mask updates (every 10 steps) are part of what the callback costs.
    return statistics.mean(timer.times[5:])  # skip warm-up steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--importances", nargs="+", default=["magnitude", "taylor", "fisher", "activation"])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of every run")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="hf_prune_overhead_"))
    names = ["plain Trainer", *args.importances]
    runs: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            runs[name].append(step_time(None if name == "plain Trainer" else name, args.steps, scratch))
    rows = {name: statistics.median(times) for name, times in runs.items()}
    # Overhead per round against that round's plain run, then the median over rounds.
    overhead = {
        name: statistics.median(t / p - 1 for t, p in zip(times, runs["plain Trainer"], strict=True))
        for name, times in runs.items()
    }
    device = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    steps = f"mean step time over the last {args.steps - 5} steps, {args.rounds} rounds"
    print(f"{device}; MiniLM-L6, batch 32 x 64 tokens; {steps}")
    print("| run | step (ms) | overhead (median over rounds) | per round |")
    print("|---|---|---|---|")
    for name, seconds in rows.items():
        per_round = ", ".join(f"{t / p - 1:+.1%}" for t, p in zip(runs[name], runs["plain Trainer"], strict=True))
        print(f"| {name} | {seconds * 1000:.0f} | {overhead[name]:+.1%} | {per_round} |")
    args.output.mkdir(parents=True, exist_ok=True)
    result = {
        "device": device,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "rounds": args.rounds,
        "step_seconds": rows,
        "overhead": overhead,
        "step_seconds_per_round": runs,
        "load_average_1min": os.getloadavg()[0],
        "cpu_affinity": sorted(os.sched_getaffinity(0)),  # taskset pins the run to a core
        "command": "python " + " ".join(sys.argv),
    }
    (args.output / "callback_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
