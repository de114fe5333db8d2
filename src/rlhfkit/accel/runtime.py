"""A process's runtime set-up for training on a CPU: torch's thread count and the allocator's reuse of memory."""

from __future__ import annotations

import ctypes
import functools
import os

import torch


def accel_on() -> bool:
    """Whether the CPU speed paths are on (the default); ``RLHFKIT_ACCEL=0`` turns every one of them off."""
    return os.environ.get("RLHFKIT_ACCEL", "1") != "0"


def set_threads(n: int) -> None:
    """Every stage's runtime set-up: ``n`` torch threads (0: torch's default) and :func:`keep_freed_memory`."""
    if n and n > 0:
        torch.set_num_threads(n)
    keep_freed_memory()


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default each tensor of 128 KB–32 MB gets fresh pages from the kernel and returns them when freed, and a
    training step frees and re-makes its activations every pass, so each of their pages is faulted in (and
    zeroed) again. With allocations below 32 MB served from the heap and the heap never trimmed, a step reuses
    the memory of the last one. The peak stays; memory freed after it is kept for the next step. glibc only
    (Linux); elsewhere a no-op; ``RLHFKIT_KEEP_FREED_MEMORY=0`` turns it off. Returns whether it applied.
    (The page faults and times it saves are in bench/RESULTS.md, "Session 5".)
    """
    if os.environ.get("RLHFKIT_KEEP_FREED_MEMORY", "1") == "0" or not accel_on():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False
