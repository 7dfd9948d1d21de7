"""Run every benchmark in bench/ in turn, print their tables, then one table of every ratio (``make bench``).

Each benchmark prints ratios measured within its own single process run, as lines ``ratio: WHAT = VALUE (NOTE)``.
Usage: python bench/run_all.py [--quick]
(--quick skips the large-v3-sized latency measurement, the slowest part on a CPU).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ("bucketing.py", []),
    ("corpus.py", []),
    ("teacher_scoring.py", []),
    ("opd_loss_memory.py", []),
    ("opd_step.py", []),
    ("kd_step.py", []),
    ("log_mel.py", []),
    ("latency.py", []),
    ("precision.py", []),
    ("cross_entropy.py", []),
    ("optim_step.py", []),
    ("train_step.py", []),
    ("allocator.py", []),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    import torch

    dev = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    print(f"# benchmarks on {dev}, torch {torch.__version__}\n")
    failed, ratios = [], []
    for name, args in BENCHES:
        if a.quick and name == "latency.py":
            args = args + ["--skip-large"]
        print(f"## {name} {' '.join(args)}".rstrip())
        r = subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True, text=True)
        print(
            r.stdout.strip()
            if r.returncode == 0
            else f"FAILED (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}"
        )
        print()
        for line in r.stdout.splitlines():
            if line.startswith("ratio: ") and " = " in line:
                what, rest = line[len("ratio: ") :].split(" = ", 1)
                value, _, note = rest.partition(" ")
                ratios.append((name, what, value, note.strip("()")))
        if r.returncode:
            failed.append(name)
    print(f"## all ratios ({dev})\n")
    print("| benchmark | ratio | value | note |\n|---|---|---|---|")
    for name, what, value, note in ratios:
        print(f"| {name} | {what} | {value} | {note} |")
    for name in failed:
        print(f"| {name} | FAILED | - | - |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
