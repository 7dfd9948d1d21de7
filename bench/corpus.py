"""The demo's espeak-ng corpora (configs/demo/synth.yaml and synth_ood.yaml: 2000 utterances, one spawned process per
split, one split per core), synthesised with each process's torch threads at its share of the cores (what
``common.data.synth.synthesize_corpora`` sets) and at torch's default (every core, in every process), alternating in
one run, into temporary directories. Prints wall and CPU seconds and whether the two wrote the same bytes.
Usage: python bench/corpus.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()

    from common.config import load
    from common.data.synth import SynthConfig, synthesize_corpora

    cores = os.cpu_count() or 1
    policies = {"share of the cores": None, f"torch's default ({cores} per process)": cores}
    rows = {k: {"wall": [], "cpu": []} for k in policies}
    digests: dict[str, set] = {k: set() for k in policies}
    for _ in range(a.repeats):
        for name, threads in policies.items():
            tmp = Path(tempfile.mkdtemp(prefix="bench_corpus_"))
            cfgs = [load(SynthConfig, CONFIGS / c, [f"out_dir={tmp / c}"]) for c in ("synth.yaml", "synth_ood.yaml")]
            r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            synthesize_corpora(cfgs, progress=False, threads=threads)
            t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            rows[name]["wall"].append(t1 - t0)
            rows[name]["cpu"].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
            digests[name].add(digest(tmp))
            shutil.rmtree(tmp)
    print(f"{cores} cores, {a.repeats} repeat(s)\n")
    print("| torch threads per process | wall s | CPU s (the processes) |\n|---|---|---|")
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in rows.items()}
    for k, m in med.items():
        print(f"| {k} | {m['wall']:.1f} | {m['cpu']:.1f} |")
    same = len(set().union(*digests.values())) == 1
    print(f"\nthe same bytes written: {same}")
    share, default = (m["wall"] for m in med.values())
    print(f"ratio: demo corpora synthesis, torch default threads / share of the cores = {default / share:.2f} (wall)")


if __name__ == "__main__":
    main()
