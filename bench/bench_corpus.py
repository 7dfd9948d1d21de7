"""The synthetic corpora the benchmarks read, synthesised once into the cache (espeak-ng, seeded) and reused.

The cache's demo directory (``common.paths.default_corpus_dir``) holds the corpus of ``configs/demo/synth.yaml``
(what ``make demo`` writes); a benchmark that asked for another corpus there stopped on a CorpusMismatchError after a
``make demo``. So the benchmarks that time the demo's steps read the demo's corpus, and the one that needs both
languages reads the default corpus from a directory of its own.
"""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def demo_corpus(out_dir: str | Path | None = None) -> Path:
    """The demo's English corpus (configs/demo/synth.yaml) in ``out_dir`` or the cache's demo directory."""
    from common.config import load
    from common.data.synth import SynthConfig, synthesize_corpus
    from common.paths import default_corpus_dir

    cfg = load(SynthConfig, CONFIGS / "demo" / "synth.yaml", [f"out_dir={out_dir or default_corpus_dir()}"])
    return synthesize_corpus(cfg, progress=False)


def bilingual_corpus(out_dir: str | Path | None = None) -> Path:
    """The default English + Mandarin corpus (``SynthConfig()``) in ``out_dir`` or the cache's synth/default."""
    from common.data.synth import SynthConfig, synthesize_corpus
    from common.paths import cache_root

    return synthesize_corpus(SynthConfig(out_dir=str(out_dir or cache_root() / "synth" / "default")), progress=False)


def demo_ark_sft(corpus: Path):
    """``(cfg, module, datamodule)`` of the demo's Ark-Base SFT stage (configs/demo/ark_sft.yaml) on ``corpus``'s
    training part, built as ``asr-distill fit`` builds it (no run directory is made)."""
    from ark_asr.config import ArkConfig
    from ark_asr.run import build
    from common.config import load

    over = [f"data.train=[{corpus}/en_train/manifest.jsonl]", "data.test=[]", "run_dir=/tmp/unused"]
    cfg = load(ArkConfig, CONFIGS / "demo" / "ark_sft.yaml", over)
    module, dm, _ = build(cfg)
    return cfg, module, dm
