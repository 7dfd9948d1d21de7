"""Teacher/student latency ratio and real-time factor of ASKD-Whisper students (arXiv 2601.19919, latency protocol).

Batch 1, greedy, exactly N generated tokens (min_new_tokens = max_new_tokens = N), same device and dtype, one
process, alternating runs, medians. Latency = encoder pass + N decoding steps. The student's encoder is the
teacher's (copied, frozen), so the encoder is timed once per repeat and counted for both.
  (a) the bundled real Whisper tiny.en (4 decoder layers) vs its 2-layer student, on a real clip
  (b) Whisper large-v3 dimensions (32 decoder layers, random weights) vs its 2- and 4-layer (turbo-like) students on
      30 s of input, at batch 1 (latency) and at ``--batch`` (throughput: RTFx = batch x 30 s / wall time). A speed-up
      means little without its batch size: distil-large-v3 reports 6.3x at batch 1 on an A100 but ~1.5x in batched
      throughput (Open ASR Leaderboard RTFx 214 vs 145.5); the paper's "~5x" is a batch-1 latency figure.
Usage: python bench/latency.py [--tokens 32] [--repeats 3] [--batch 8] [--skip-large] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse

import torch

from common.latency import measure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--batch", type=int, default=8, help="batch of the throughput rows (large-v3 dims)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = ap.parse_args()
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from askd_whisper.student import build_student
    from common.whisper import load_whisper

    dtype = getattr(torch, a.dtype)
    torch.set_grad_enabled(False)
    rows = []
    teacher, proc = load_whisper("bundled:tiny.en", device=a.device, dtype=dtype)
    student = build_student(teacher, 2).eval()
    import numpy as np

    secs = 10.0
    audio = (0.1 * np.random.default_rng(0).standard_normal(int(16000 * secs))).astype(np.float32)
    feats = proc.feature_extractor([audio], sampling_rate=16000, return_tensors="pt").input_features.to(a.device, dtype)
    rows.append(("tiny.en (real) -> 2 dec. layers", secs, measure(teacher, student, feats, a.tokens, a.repeats)))
    if not a.skip_large:
        cfg = WhisperConfig(
            vocab_size=51866,
            num_mel_bins=128,
            d_model=1280,
            encoder_layers=32,
            decoder_layers=32,
            encoder_attention_heads=20,
            decoder_attention_heads=20,
            encoder_ffn_dim=5120,
            decoder_ffn_dim=5120,
            decoder_start_token_id=50258,
            eos_token_id=50257,
            pad_token_id=50257,
            bos_token_id=50257,
        )
        torch.manual_seed(0)
        big = WhisperForConditionalGeneration(cfg).to(a.device, dtype).eval()
        big.generation_config.decoder_start_token_id = 50258
        big.generation_config.eos_token_id = 50257
        big.generation_config.pad_token_id = 50257
        feats = torch.randn(max(1, a.batch), 128, 3000, device=a.device, dtype=dtype)
        for n_layers in (2, 4):
            small = build_student(big, n_layers).eval()
            r1 = measure(big, small, feats[:1], a.tokens, a.repeats)
            rows.append((f"large-v3 dims (random) -> {n_layers} dec. layers, batch 1", 30.0, r1))
            if a.batch > 1:
                rb = measure(big, small, feats, a.tokens, max(1, a.repeats - 1))
                rows.append((f"large-v3 dims (random) -> {n_layers} dec. layers, batch {a.batch}", 30.0 * a.batch, rb))
            del small
    print(f"latency, batch 1, greedy, {a.tokens} generated tokens, {a.device} {a.dtype}, medians of {a.repeats}")
    print(
        "| model | encoder s | decode teacher s | decode student s | teacher/student (total) | decode-only ratio "
        "| encoder share of student | RTFx teacher | RTFx student |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, secs, r in rows:
        print(
            f"| {name} | {r['encoder']:.3f} | {r['dec_teacher']:.3f} | {r['dec_student']:.3f} "
            f"| {r['teacher'] / r['student']:.2f}x | {r['dec_teacher'] / r['dec_student']:.2f}x "
            f"| {r['encoder'] / r['student']:.0%} | {secs / r['teacher']:.1f} | {secs / r['student']:.1f} |"
        )
    for name, _secs, r in rows:
        print(
            f"ratio: ASKD latency, teacher / student total ({name}, {a.device}) = "
            f"{r['teacher'] / r['student']:.2f} (paper ~5, GPU)"
        )


if __name__ == "__main__":
    main()
