"""What every benchmark result carries: the machine and versions it ran on, and the quality-curve plot."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import transformers

import hf_prune
from hf_prune.latency import device_name


def run_meta(smoke: bool, device: torch.device | None = None) -> dict[str, Any]:
    """Machine, versions, load and the command line, so a result says where it came from."""
    meta = {
        "device": device_name(device or torch.device("cpu")),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_prune": hf_prune.__version__,
        "command": "python " + " ".join(sys.argv),
        "smoke": smoke,
    }
    if hasattr(os, "getloadavg"):
        meta["load_average_1min"] = round(os.getloadavg()[0], 2)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        meta["torch_pruning"] = importlib.metadata.version("torch-pruning")  # the module says 1.6.0 in 1.6.1
    return meta


def plot_curves(
    data: dict[str, Any], path: Path, *, x: str, y: str, xlabel: str, ylabel: str, title: str, log_y: bool = False
) -> None:
    """One line per curve in ``data['curves']`` (hf_prune solid, peers dotted) and the dense model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8))
    ax.axhline(data[f"dense_{y}"], color="k", linestyle="--", label="dense")
    if f"dense_fine_tuned_{y}" in data:
        ax.axhline(data[f"dense_fine_tuned_{y}"], color="0.5", linestyle="-.", label="dense + the recovery fine-tuning")
    for name, points in data["curves"].items():
        xs, ys = zip(*sorted((p[x], p[y]) for p in points), strict=True)
        ax.plot(xs, ys, "o-" if name.startswith("hf_prune") else "s:", label=name)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: curves stay visible
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
