"""Process-level settings that make small, repeated tensor work fast on CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Ask glibc to serve tensor buffers from its heap and keep freed ones for reuse.

    By default glibc hands allocations above a few MB straight to ``mmap`` and returns them on
    free, so every step of a 5-replica MLP-256 (5 MB activations) page-faults its buffers in
    again: measured here, a 1280×8 @ 8×1024 matmul took 4.5 ms with fresh buffers and 0.4 ms with
    reused ones. Returns whether the setting was applied (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, min(limit_bytes, 1 << 30))
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2 * min(limit_bytes, 1 << 30))
        return bool(ok)
    except (OSError, AttributeError):
        return False
