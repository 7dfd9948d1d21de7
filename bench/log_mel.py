"""Whisper's 30 s log-mel features: computed per batch vs kept per clip in the process's store.

``common.data.collate.whisper_log_mel``: the ASKD students' collator, Whisper decoding with
``decoding.encoder_cache_mb`` and OPD's Whisper teacher keep each clip's features beside the frozen encoder's states
(the same budget, a store of their own). Real tiny.en feature extractor, batches of 8 espeak-ng clips, computed and
kept alternating, medians, one process; the kept batch is checked equal to the computed one (bytes).
Usage: python bench/log_mel.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    from common.data.collate import whisper_log_mel
    from common.data.datamodule import cut_audio
    from common.data.manifests import load_manifest
    from common.data.synth import SynthConfig, synthesize_corpus
    from common.whisper import load_whisper

    tmp = Path(tempfile.mkdtemp(prefix="log_mel_"))
    corpus = synthesize_corpus(SynthConfig(out_dir=str(tmp), en_sizes=[8 * a.repeats, 0, 0], zh_sizes=[0, 0, 0]))
    cuts, _ = load_manifest(corpus / "en_train" / "manifest.jsonl")
    audios = [cut_audio(c) for c in cuts]
    batches = [audios[i : i + 8] for i in range(0, len(audios), 8)]
    fe = load_whisper("bundled:tiny.en")[1].feature_extractor
    for b in batches:
        whisper_log_mel(fe, b, cache_mb=4000)  # fill the store: a later epoch, another student, another seed
    t_comp, t_kept = [], []
    for b in batches:
        t0 = time.perf_counter()
        computed = whisper_log_mel(fe, b)
        t_comp.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        kept = whisper_log_mel(fe, b, cache_mb=4000)
        t_kept.append(time.perf_counter() - t0)
        assert torch.equal(computed, kept)
    c, k = statistics.median(t_comp), statistics.median(t_kept)
    sec = statistics.median(len(x) / 16000 for x in audios)
    print(f"Whisper log-mel on CPU ({torch.get_num_threads()} threads), batches of 8 clips (median {sec:.1f} s)")
    print(f"| features | batch s | per clip ms |\n|---|---|---|\n| computed | {c:.4f} | {1000 * c / 8:.1f} |")
    print(f"| from the store | {k:.4f} | {1000 * k / 8:.2f} |")
    print(f"ratio: Whisper log-mel batch time, computed / from the per-clip store = {c / k:.1f} (exact: bytes equal)")


if __name__ == "__main__":
    main()
