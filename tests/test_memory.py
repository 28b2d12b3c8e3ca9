"""Freed heap memory goes back to the system between calibration windows and reconstructed blocks."""

from __future__ import annotations

import os
import platform
import sys

import torch

from hf_prune.memory import _trim, release_freed_memory


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_heap_blocks_are_returned_to_the_system() -> None:
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        assert _trim() is None  # elsewhere: nothing to call, and nothing breaks
        release_freed_memory()
        return
    # Blocks just under 64 KiB come from the heap (not mmap), which glibc keeps resident once they are freed; the
    # last one allocated stays alive so that the freed ones do not sit at the top of the heap (trimmed on free).
    chunks = [torch.ones(16 * 1024 - 64) for _ in range(3000)]
    pin = torch.ones(16 * 1024 - 64)
    freed = sum(c.numel() * c.element_size() for c in chunks)
    del chunks
    before = _resident_bytes()
    release_freed_memory()
    assert before - _resident_bytes() > freed / 2
    del pin
