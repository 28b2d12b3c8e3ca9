"""What the one-shot default path costs: SmolLM2-135M at 20% fewer block parameters, time and peak memory.

    python benchmarks/oneshot_cost.py                    # about 5 minutes on 2 CPU cores (run nothing else)
    python benchmarks/oneshot_cost.py --threads 1        # one thread
    python benchmarks/oneshot_cost.py --smoke            # tiny random Llama, seconds (CI)
    python benchmarks/oneshot_cost.py --keep-freed-memory --output F.json   # without hf_prune.memory's release

The path is the CLI's default with calibration data given: 32 windows of 512 tokens of four Shakespeare plays,
Taylor scores, global ranking, and block-by-block removal with bias compensation and the weight refit. The two
stages are timed apart (``hf_prune.calibrate``, then ``hf_prune.prune`` with the fitted scores, which is the
removal and the reconstruction). Peak memory is the process's resident set, sampled every 10 ms, against the
float32 model's own size. Writes benchmarks/results/oneshot_cost.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import load_smollm2, tiny_smollm2
from quality_decoder import CALIBRATION_PLAYS, shakespeare, windows
from reporting import run_meta

import hf_prune

RESULTS = Path(__file__).resolve().parent / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakMemory:
    """The largest resident set seen while the ``with`` block runs (a sampling thread, every 10 ms)."""

    def __enter__(self) -> PeakMemory:
        self.peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (what hf_prune does between windows), so that
    the resident set measures what is alive."""
    gc.collect()
    hf_prune.memory.release_freed_memory()


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each tensor once."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--calibration-windows", type=int, default=32)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="do not hand freed heap memory back between windows and blocks (what hf_prune.memory saves)",
    )
    args = parser.parse_args(argv)
    if args.keep_freed_memory:
        for module in (hf_prune.importance, hf_prune.reconstruct):
            module.release_freed_memory = lambda: None
    torch.set_num_threads(args.threads)
    interpreter = resident_bytes()  # python + torch + transformers, before any model
    if args.smoke:
        dense, tokenizer = tiny_smollm2()
        args.window, args.calibration_windows = 32, 4
    else:
        dense, tokenizer = load_smollm2(plain=True)
    output = args.output or RESULTS / ("oneshot_cost-smoke.json" if args.smoke else "oneshot_cost.json")
    plays = windows(tokenizer, [shakespeare(p) for p in CALIBRATION_PLAYS], args.window, args.calibration_windows)
    model = dense
    size = model_bytes(model)  # the dense float32 model (tied tensors once)
    release_freed_memory()  # what loading freed (the GGUF dequantization's copies) leaves the resident set
    before = resident_bytes()
    with PeakMemory() as calibrate_memory:
        start = time.perf_counter()
        scores = hf_prune.calibrate(model, plays, "taylor")
        calibrate_seconds = time.perf_counter() - start
    with PeakMemory() as prune_memory:
        start = time.perf_counter()
        report = hf_prune.prune(
            model, params=args.params, importance=scores, ranking="global", calibration=plays, reconstruct=True
        )
        prune_seconds = time.perf_counter() - start
    peak = max(calibrate_memory.peak, prune_memory.peak)
    summary = report.extra.get("reconstruction", {})
    data: dict[str, Any] = {
        "target": args.params,
        "params_removed": 1 - report.after.block_parameters / report.before.block_parameters,
        "threads": args.threads,
        "calibration_tokens": args.calibration_windows * args.window,
        "calibrate_seconds": round(calibrate_seconds, 1),
        "prune_and_reconstruct_seconds": round(prune_seconds, 1),
        "total_seconds": round(calibrate_seconds + prune_seconds, 1),
        "model_fp32_bytes": size,
        "rss_interpreter_bytes": interpreter,
        "rss_before_bytes": before,
        "rss_peak_bytes": peak,
        # What the model and the work hold, without the interpreter's own libraries: the goal is <= 2x the model.
        "peak_over_model": round((peak - interpreter) / size, 2),
        "calibrate_peak_over_model": round((calibrate_memory.peak - interpreter) / size, 2),
        "prune_peak_over_model": round((prune_memory.peak - interpreter) / size, 2),
        # glibc keeps freed blocks of up to 32 MB resident unless told otherwise (MALLOC_MMAP_THRESHOLD_)
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "freed_memory_released": not args.keep_freed_memory,
        # What the work adds to what was resident before it (the model, its tokenizer, the calibration text).
        "added_over_model": round((peak - before) / size, 2),
        "reconstruction_summary": {k: v for k, v in summary.items() if k != "per_block"},
        "meta": run_meta(args.smoke) | {"calibration_plays": CALIBRATION_PLAYS, "window": args.window},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: v for k, v in data.items() if k not in ("meta", "reconstruction_summary")}, indent=1))


if __name__ == "__main__":
    main()
