"""Where the project keeps and finds files outside the repository: its cache and the shared data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache (converted bundled models, demo corpus, HF audio): ``ASR_DISTILL_CACHE`` or ~/.cache/asr-distill."""
    return Path(os.environ.get("ASR_DISTILL_CACHE", Path.home() / ".cache" / "asr-distill"))


def shared_real_speech() -> Path:
    """``../shared/data/real_speech`` beside the checkout (``ASR_DISTILL_SHARED`` overrides ``../shared``)."""
    root = Path(os.environ.get("ASR_DISTILL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    return root / "data" / "real_speech"


def default_corpus_dir() -> Path:
    """The demo's synthetic corpus (espeak-ng, seeded) in the cache."""
    return cache_root() / "synth" / "demo"
