"""``make demo``: the main job on the embedded default corpus.

Stages (each reused when its output is complete, so a second run is fast):
1. synthesise the English/Mandarin corpus with espeak-ng (cached by its arguments);
2. evaluate the bundled real Whisper tiny.en on the synthetic English dev and test sets;
3. print and write the results table.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.io import atomic_write_text, is_complete


def default_corpus_dir() -> Path:
    from common.whisper import cache_root

    return cache_root() / "synth" / "default"


def run_demo(out: Path, corpus_dir: Path | None = None) -> str:
    from common.data.synth import SynthConfig, synthesize_corpus
    from common.evaluate import EvalConfig, markdown_table, run_evaluation

    corpus = synthesize_corpus(SynthConfig(out_dir=str(corpus_dir or default_corpus_dir())))
    out.mkdir(parents=True, exist_ok=True)
    ev_dir = out / "eval_teacher_tiny.en"
    if is_complete(ev_dir):
        summary = json.loads((ev_dir / "summary.json").read_text())
        print(f"[demo] reusing finished stage {ev_dir}")
    else:
        cfg = EvalConfig(out_dir=str(ev_dir), model="bundled:tiny.en", sets=[str(corpus / "en_dev" / "manifest.jsonl"), str(corpus / "en_test" / "manifest.jsonl")])
        summary = run_evaluation(cfg, overwrite=True)
    table = "## Whisper tiny.en (bundled, real weights) on the synthetic English corpus\n\n" + markdown_table(summary, "tiny.en")
    atomic_write_text(out / "results.md", table)
    print(table)
    print(f"results written to {out / 'results.md'}")
    return table
