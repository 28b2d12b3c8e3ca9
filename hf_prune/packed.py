"""Compact, exact JSON forms of the callback's tensors: masks as packed bits, scores as float32 bytes.

``Trainer`` checkpoints store a callback's state as JSON inside ``trainer_state.json``. As plain lists, the masks
and scores of an 8B Llama (32 blocks of 14,336 neurons and 32 heads) are about 460k values each, several megabytes
written and parsed at every save. Base64 of packed bits (masks) and of little-endian float32 bytes (scores) is
exact and several times smaller. Plain lists, as older checkpoints hold them, still load.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch


def pack_mask(mask: torch.Tensor) -> dict[str, Any]:
    """A bool tensor as ``{"bits": base64, "n": length}``."""
    flat = mask.detach().cpu().flatten().numpy().astype(bool)
    return {"bits": base64.b64encode(np.packbits(flat).tobytes()).decode("ascii"), "n": int(flat.size)}


def unpack_mask(value: dict[str, Any] | list[bool]) -> torch.Tensor:
    """What :func:`pack_mask` wrote, or a plain list of bools."""
    if isinstance(value, list):
        return torch.tensor(value, dtype=torch.bool)
    bits = np.frombuffer(base64.b64decode(value["bits"]), dtype=np.uint8)
    return torch.from_numpy(np.unpackbits(bits)[: int(value["n"])].astype(bool).copy())


def pack_scores(scores: torch.Tensor) -> dict[str, str]:
    """A float tensor as ``{"f32": base64 of its little-endian float32 bytes}`` (exact for float32 scores)."""
    array = scores.detach().cpu().flatten().to(torch.float32).numpy().astype("<f4")
    return {"f32": base64.b64encode(array.tobytes()).decode("ascii")}


def unpack_scores(value: dict[str, str] | list[float]) -> torch.Tensor:
    """What :func:`pack_scores` wrote, or a plain list of floats."""
    if isinstance(value, list):
        return torch.tensor(value, dtype=torch.float32)
    return torch.from_numpy(np.frombuffer(base64.b64decode(value["f32"]), dtype="<f4").astype(np.float32).copy())
