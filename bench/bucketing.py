"""Padding fraction of duration-bucketed vs random batching on the synthetic training set.

padding fraction = sum_batches (n * max_duration - sum durations) / sum_batches (n * max_duration),
i.e. the share of the padded (B, T) audio tensor that is padding. Same cuts, same seconds per batch;
one process run. Usage: python bench/bucketing.py [--corpus DIR] [--batch-seconds 60] [--buckets 8]
"""

from __future__ import annotations

import argparse
import warnings

from bench_corpus import bilingual_corpus  # bench/ (the script's directory)
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

from common.data.manifests import load_manifest


def padding_fraction(sampler) -> tuple[float, int]:
    padded = real = 0.0
    n = 0
    for batch in sampler:
        durs = [c.duration for c in batch]
        padded += len(durs) * max(durs)
        real += sum(durs)
        n += 1
    return 1.0 - real / padded, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=None, help="synthetic corpus dir (default: the cache's synth/default)")
    ap.add_argument("--batch-seconds", type=float, default=60.0)
    ap.add_argument("--buckets", type=int, default=8)
    args = ap.parse_args()
    corpus = bilingual_corpus(args.corpus)
    rows = []
    for lang in ("en", "zh"):
        cuts, _ = load_manifest(corpus / f"{lang}_train" / "manifest.jsonl")
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet")
        rand, nb_r = padding_fraction(DynamicCutSampler(cuts, max_duration=args.batch_seconds, shuffle=True, seed=0))
        buck, nb_b = padding_fraction(
            DynamicBucketingSampler(
                cuts, max_duration=args.batch_seconds, num_buckets=args.buckets, shuffle=True, seed=0
            )
        )
        rows.append((f"{lang}_train", len(cuts), rand, nb_r, buck, nb_b))
    print(
        f"| set | utts | random: padding | batches | bucketed ({args.buckets} buckets): padding | batches "
        "| bucketed/random |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, n, r, nr, b, nb in rows:
        print(f"| {name} | {n} | {100 * r:.1f} % | {nr} | {100 * b:.1f} % | {nb} | {b / r:.2f} |")
        print(f"ratio: padding, bucketed / random ({name}) = {b / r:.3f} (lower is better)")


if __name__ == "__main__":
    main()
