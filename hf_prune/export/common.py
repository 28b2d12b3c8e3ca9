"""What every export shares: the checks made before any work, and the write that never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

FORMATS = ("gguf", "onnx")


class ExportError(ValueError):
    """An export that cannot be made as asked (names what is missing and the fix); nothing was written."""


def check_checkpoint(directory: str | os.PathLike[str]) -> Path:
    """``directory`` as a path, if it is a saved checkpoint folder (pruned by hf_prune or plain transformers)."""
    path = Path(directory)
    if not path.is_dir():
        raise ExportError(
            f"'{path}' is not a folder. Export reads a checkpoint folder: save the model first "
            "(`hf-prune prune ... --output DIR` or hf_prune.save_pretrained(model, DIR))."
        )
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    if not (path / "config.json").is_file() or not has_weights:
        missing = " and ".join(
            what for what, ok in (("config.json", (path / "config.json").is_file()), ("weights", has_weights)) if not ok
        )
        raise ExportError(
            f"'{path}' is not a pruned or plain transformers checkpoint: it has no {missing} (*.safetensors). "
            "Point export at the folder written by `hf-prune prune --output DIR` or save_pretrained."
        )
    return path


def check_choice(what: str, value: str, valid: Sequence[str]) -> str:
    """``value`` if it is one of ``valid``, else an :class:`ExportError` listing the valid ones."""
    if value not in valid:
        raise ExportError(f"unknown {what} {value!r}; valid ones are: {', '.join(valid)}.")
    return value


def check_output(output: str | os.PathLike[str], overwrite: bool, suffix: str) -> Path:
    """The output file's path, refused if it exists (unless ``overwrite``) or is a folder."""
    path = Path(output)
    if path.is_dir():
        raise ExportError(f"output '{path}' is a folder; give a file name such as '{path / ('model' + suffix)}'.")
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"'{path}' already exists; pass overwrite=True (CLI: --overwrite) or choose another output. "
            "Nothing was written."
        )
    if not path.parent.is_dir():
        raise ExportError(f"the folder of output '{path}' does not exist; create '{path.parent}' first.")
    return path


@contextlib.contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """A temporary path next to ``target`` to write to; it replaces ``target`` in one rename when the block ends
    without error, and is removed otherwise, so a failed export leaves nothing behind (nor a damaged old file)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    staging = Path(tmp)
    try:
        yield staging
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
        # Some writers (onnx external data) put companion files next to the staged file.
        for extra in target.parent.glob(f"{staging.name}*"):
            extra.unlink(missing_ok=True)


def load_checkpoint(path: Path, model_class: Any = None) -> Any:
    """The checkpoint's model in float32, eval mode, with its per-layer structure restored (hf_prune's loader)."""
    import torch

    from ..checkpoint import from_pretrained

    model = from_pretrained(path, model_class, dtype=torch.float32)
    return model.eval()
