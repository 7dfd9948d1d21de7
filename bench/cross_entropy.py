"""The token cross-entropy's layout, one process: ``F.cross_entropy`` over a (B, V, T) view of the logits (the class
dimension in the middle, as ``common.losses.cross_entropy`` computed it before 2026-12-02) vs over (B*T, V) rows (what
it computes now), forward + backward from bf16 logits, same values. Shapes: an Ark SFT batch of the demo (~450
transcript tokens in one row, Whisper's 51,865-token vocabulary) and an ASKD batch (8 x 11 tokens).
Usage: python bench/cross_entropy.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def view_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The token-mean cross-entropy as ``common.losses.cross_entropy`` computed it before 2026-12-02: over a (B, V, T)
    view of the logits (the reference the benchmarks time the current one against)."""
    mask = labels != -100
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    from common.losses import cross_entropy

    g = torch.Generator().manual_seed(0)
    print(f"{torch.get_num_threads()} threads\n\n| logits (B, T, V) | (B, V, T) view ms | (B*T, V) rows ms | ratio |")
    print("|---|---|---|---|")
    ratios = []
    for shape in ((1, 450, 51865), (8, 11, 51865)):
        z = torch.randn(*shape, generator=g).bfloat16().requires_grad_()
        y = torch.randint(0, shape[-1], shape[:2], generator=g)

        def old(z=z, y=y):
            view_cross_entropy(z, y).backward()

        def new(z=z, y=y):
            cross_entropy(z, y).backward()

        times = {old: [], new: []}
        old(), new()  # warm-up
        for _ in range(a.repeats):
            for fn in (old, new):
                z.grad = None
                t0 = time.perf_counter()
                fn()
                times[fn].append(time.perf_counter() - t0)
        t_old, t_new = statistics.median(times[old]), statistics.median(times[new])
        ref = F.cross_entropy(z.detach().float().transpose(1, 2), y).item()
        assert abs(cross_entropy(z.detach(), y).item() - ref) <= 1e-5 * abs(ref)
        print(f"| {tuple(shape)} | {t_old * 1e3:.1f} | {t_new * 1e3:.1f} | {t_old / t_new:.2f} |")
        ratios.append(f"ratio: cross-entropy {tuple(shape)} (B, V, T) view / (B*T, V) rows = {t_old / t_new:.2f}")
    print("\n" + "\n".join(ratios))


if __name__ == "__main__":
    main()
