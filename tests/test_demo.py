"""`make demo` end to end (slow: about 12 minutes on 2 CPU cores; `make test-slow`)."""

from __future__ import annotations

import re

import pytest


@pytest.mark.slow
def test_demo_end_to_end_then_reuses_every_stage(tmp_path):
    from common.demo import run_demo

    lines: list[str] = []
    md = run_demo(tmp_path / "out", corpus_dir=tmp_path / "corpus", log=lines.append)
    for row in (
        "teacher: Whisper tiny.en",
        "student, CE only",
        "student, Distil-Whisper-style",
        "student, ASKD",
        "Ark-Base (SFT)",
        "Ark-Base + OPD",
        "Ark-Base + TD",
        "Ark-Base + TD + OPD",
    ):
        assert re.search(rf"\| {re.escape(row)} \|.*\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \|", md), row
    assert (tmp_path / "out" / "results.tex").is_file()
    again: list[str] = []
    assert run_demo(tmp_path / "out", corpus_dir=tmp_path / "corpus", log=again.append) == md
    assert sum("reused" in line for line in again) == 10  # every stage but the (cached) corpus
