"""The CPU allocator: large tensors kept in glibc's heap instead of a fresh ``mmap`` per allocation.

PyTorch's CPU tensors come from ``malloc``. glibc serves a block above its mmap threshold (128 KiB at start, raised
as blocks are freed, but never above 32 MiB) with a fresh ``mmap`` and gives it back on ``free``, so every use of such
a block page-faults and has the kernel zero it again. A training step allocates several such blocks each time: the
vocabulary-sized logits and their gradient (176 x 50369 float32 = 35 MB on the demo's Ark batch), the tied embedding's
dense gradient (50369 x 256 float32 = 52 MB), its bf16 autocast copy, a Whisper encoder's 30 s activations. On this
project's 2-core CPU, greedy decoding of 32 clips with Whisper tiny.en took 1.1-1.8 M minor page faults and 2.7-4.1 s of
kernel time; with the threshold at 1 GiB it takes none and is 1.18-1.30x faster (``bench/allocator.py``; a training
step's faults go too, its time within noise), and ``make demo``'s kernel time fell from 376 to 105 s (of ~3200 CPU-s).
The numbers a run computes do not change (only where the memory comes from).

:func:`keep_large_blocks` sets glibc's mmap threshold (blocks below it come from the heap and are reused) and its trim
threshold (free memory at the heap's top kept up to that size instead of returned at once). It is what PyTorch's CPU
performance guides get from jemalloc or tcmalloc, without a preloaded library. ``asr-distill`` and the test suite call
it at start; a notebook may. Off with ``ASR_DISTILL_MALLOC=default``; left alone where the user already tuned glibc's
malloc (``GLIBC_TUNABLES`` naming ``glibc.malloc.*``) or preloaded another allocator (``LD_PRELOAD``), and where the C
library is not glibc (macOS, musl), which this does not touch.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter numbers (``<malloc.h>``)."""

DEFAULT_THRESHOLD_MB = 1024
"""Blocks up to this size come from the heap (the demo's largest per-step tensors are ~100 MB)."""

_applied: int | None = None


def keep_large_blocks(threshold_mb: int = DEFAULT_THRESHOLD_MB) -> str:
    """Keep ``malloc`` blocks up to ``threshold_mb`` in glibc's heap (see the module docstring). Returns what was
    done, in words: ``"applied: ..."`` or why not (``"skipped: ..."``). Idempotent; another size resets it."""
    global _applied
    if threshold_mb < 1 or threshold_mb * 2**20 >= 2**31:
        raise ValueError(f"threshold_mb must be in [1, 2047], got {threshold_mb}")
    why = _reason_to_skip()
    if why:
        return f"skipped: {why}"
    if _applied == threshold_mb:
        return f"applied: mmap and trim thresholds {threshold_mb} MiB (already)"
    if not set_thresholds(threshold_mb, threshold_mb):
        return "skipped: glibc's mallopt refused the thresholds"
    _applied = threshold_mb
    return f"applied: mmap and trim thresholds {threshold_mb} MiB"


def set_thresholds(mmap_mb: int, trim_mb: int) -> bool:
    """glibc's mmap and trim thresholds, in MiB, with ``mallopt`` (glibc only; no checks: see
    :func:`keep_large_blocks`). True when glibc took both."""
    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_mb * 2**20))
        and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim_mb * 2**20))
    )


def _reason_to_skip() -> str:
    if os.environ.get("ASR_DISTILL_MALLOC", "").strip().lower() in ("default", "off", "0", "no"):
        return "ASR_DISTILL_MALLOC asks for glibc's default"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES already sets glibc.malloc.*"
    if os.environ.get("LD_PRELOAD", "").strip():
        return "LD_PRELOAD is set (another allocator may be in use)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"the C library is not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown'})"
    return ""
