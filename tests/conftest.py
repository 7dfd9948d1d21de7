"""Shared fixtures. Tests are offline and CPU-only; real speech is read in place from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.paths import shared_real_speech

REPO = Path(__file__).resolve().parents[1]
REAL_SPEECH = shared_real_speech()  # the same lookup as make demo's real_en column

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def real_speech() -> Path:
    if not (REAL_SPEECH / "manifest.jsonl").is_file():
        pytest.skip(f"real speech clips not found at {REAL_SPEECH} (the ../shared folder beside the repo)")
    return REAL_SPEECH


@pytest.fixture(scope="session")
def english_manifest(real_speech: Path, tmp_path_factory) -> Path:
    """The 40 English clips as a manifest with absolute paths (folder name 'real_en')."""
    from common.data.manifests import write_jsonl_subset

    out = tmp_path_factory.mktemp("real") / "real_en" / "manifest.jsonl"
    write_jsonl_subset(real_speech / "manifest.jsonl", out, language="en")
    return out


@pytest.fixture(scope="session")
def whisper_tiny():
    """The bundled real Whisper tiny.en (converted once into the cache)."""
    from common.whisper import load_whisper

    return load_whisper("bundled:tiny.en")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A small synthetic English + Mandarin corpus (seeded, a few seconds to make)."""
    from common.data.synth import SynthConfig, synthesize_corpus

    out = tmp_path_factory.mktemp("synth")
    return synthesize_corpus(SynthConfig(out_dir=str(out), en_sizes=[48, 8, 8], zh_sizes=[16, 4, 4]), progress=False)
