"""AdamW's step on a CPU, one process: torch's default there (a Python loop over the parameters, ``foreach=False``)
vs the fused kernel ``common.training.optim`` now chooses (``fused=True``), on the trainable parameters of the demo's
students (an ASKD 3-layer tiny.en student: 27M, most in the 51,865 x 384 token embedding; the Ark-ASR student: 17M),
float32, same gradients, and the largest difference of the weights after the steps.
Usage: python bench/optim_step.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def _shapes(vocab: int, d: int, ffn: int, layers: int, per_layer: int) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        out += [(d, d)] * per_layer + [(ffn, d), (d, ffn)] + [(d,)] * 8
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    from common.training.optim import adamw_kernel

    students = {
        "ASKD student (3 decoder layers of tiny.en)": _shapes(51865, 384, 1536, 3, 8),
        "Ark-ASR student (demo: 4-layer LM + adapter)": _shapes(51865, 256, 768, 4, 4) + [(512, 1536), (256, 512)],
    }
    print(f"{torch.get_num_threads()} threads\n")
    print("| parameters | n | loop ms | fused ms | loop / fused | max weight diff |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for name, shapes in students.items():
        g = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(*s, generator=g) * 0.02) for s in shapes]
        grads = [torch.randn(p.shape, generator=g) for p in ps]
        runs = {}
        for kind, kw in (("loop", {"foreach": False}), ("fused", adamw_kernel(ps))):
            qs = copy.deepcopy(ps)
            for q, gr in zip(qs, grads):
                q.grad = gr
            runs[kind] = (qs, torch.optim.AdamW(qs, lr=1e-3, weight_decay=0.01, **kw), [])
        for _ in range(a.repeats + 1):  # the first of each: warm-up (state allocation)
            for _, opt, t in runs.values():
                t0 = time.perf_counter()
                opt.step()
                t.append(time.perf_counter() - t0)
        t_loop, t_fused = (statistics.median(runs[k][2][1:]) for k in ("loop", "fused"))
        diff = max((p - q).abs().max().item() for p, q in zip(runs["loop"][0], runs["fused"][0]))
        n = sum(p.numel() for p in ps)
        row = f"| {name} | {n / 1e6:.1f}M | {t_loop * 1e3:.1f} | {t_fused * 1e3:.1f} | {t_loop / t_fused:.2f} |"
        print(f"{row} {diff:.1e} |")
        ratios.append(f"ratio: AdamW step, {name}, loop / fused = {t_loop / t_fused:.2f}")
    print("\n" + "\n".join(ratios))


if __name__ == "__main__":
    main()
