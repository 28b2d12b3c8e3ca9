"""Give freed memory back to the system between the large steps of calibration and reconstruction.

glibc keeps freed heap blocks resident for reuse. One calibration window of SmolLM2-135M allocates and frees a few
hundred megabytes of activations, recomputed blocks and loss chunks; between windows the process held 2.68x the
float32 model above the interpreter, of which 1.79x was live tensors (the model and the summed gradients) and the
rest freed blocks that ``malloc_trim`` returned (README "What the default path costs"). Elsewhere (other C
libraries, other systems) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``); a no-op where it does not exist."""
    trim = _trim()
    if trim is not None:
        trim(0)
