"""common.training.allocator against the real glibc: page faults of a repeated large allocation, in fresh processes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from common.training.allocator import keep_large_blocks

REPO = Path(__file__).resolve().parents[1]
glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only (Linux, glibc)"
)

# A step's pattern: a 64 MB tensor (above glibc's 32 MiB mmap cap) made, written and freed 20 times; the minor page
# faults of the loop, in a process of its own (so nothing of this test process's heap is involved).
PROBE = """
import json, resource, sys, torch
from common.training.allocator import keep_large_blocks
what = keep_large_blocks() if sys.argv[1] == "tuned" else "not called"
torch.zeros(16 * 2**20).add_(1.0)  # warm-up: the heap grows once
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    t = torch.zeros(16 * 2**20)  # 64 MB of float32
    t.add_(1.0)
    s = float(t[::4096].sum())
    del t
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0, "what": what, "sum": s}))
"""


def _probe(mode: str, **env: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("ASR_DISTILL_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")}
    e.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=REPO, env=e, capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_large_blocks_are_reused_instead_of_page_faulted_each_time():
    """glibc's default mmaps a 64 MB block afresh on each allocation (16k page faults each, 20 times); with
    keep_large_blocks the block is reused from the heap (at most one block's faults, once), and the values computed
    are the same."""
    default, tuned = _probe("default"), _probe("tuned")
    assert tuned["what"].startswith("applied"), tuned
    assert default["faults"] > 20 * 10_000, default  # 20 x 64 MB / 4 KiB pages = 327,680 faults if each is touched
    assert tuned["faults"] < 2 * 16_384, tuned  # at most the heap's growth to the block's size once (16,384 pages)
    assert tuned["sum"] == default["sum"]


@glibc
def test_the_users_own_choice_is_left_alone():
    """ASR_DISTILL_MALLOC=default, a GLIBC_TUNABLES malloc setting or a preloaded library: nothing is changed (the
    faults are the default's)."""
    off = _probe("tuned", ASR_DISTILL_MALLOC="default")
    assert off["what"].startswith("skipped: ASR_DISTILL_MALLOC") and off["faults"] > 20 * 10_000, off
    tunables = _probe("tuned", GLIBC_TUNABLES="glibc.malloc.check=0")
    assert tunables["what"].startswith("skipped: GLIBC_TUNABLES"), tunables


def test_threshold_out_of_range_is_refused():
    for bad in (0, 2048):
        with pytest.raises(ValueError, match="threshold_mb"):
            keep_large_blocks(bad)
