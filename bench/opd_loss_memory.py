"""Peak memory of one OPD loss forward+backward: union top-k KL at the candidates vs a naive full-vocabulary KL.

Shapes of a paper-scale micro-batch (B=8 rollouts, T=64 transcript positions, d=1024 = Qwen3-0.6B hidden size,
V=151,936), k=32 (|U| <= 64). Both start from the student's final hidden states (requires grad) and the LM head:
  naive: zS = lm_head(h) (B,T,V) -> log_softmax; teacher log-probs (B,T,V); KL over V; backward
  ours:  zS only at U via gathered LM-head rows (ArkStudent.logits_at); teacher values at U; union_topk_kl; backward
Each path runs in a fresh process; the figure is the growth of peak RSS (ru_maxrss) during forward+backward. Row 1: the
loss path itself (LM head frozen, gradient w.r.t. the hidden states). Row 2: the LM head is trained too; its .grad is
allocated before the measurement, and the dense (V x d) gradient temporary of the backward counts in both paths.
Usage: python bench/opd_loss_memory.py [--batch 8] [--positions 64] [--hidden 1024] [--top-k 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

VOCAB = 151_936


def child(mode: str, B: int, T: int, d: int, k: int, wgrad: bool) -> None:
    import torch

    from common.losses import build_candidates, logits_at, union_topk_kl

    torch.manual_seed(0)
    head = torch.nn.Linear(d, VOCAB, bias=False)
    h = torch.randn(B, T, d, requires_grad=True)
    S = torch.randint(0, VOCAB, (B, T, k))
    K = torch.randint(0, VOCAB, (B, T, k))
    mask = torch.ones(B, T, dtype=torch.bool)
    if mode == "ours":
        U = build_candidates(S, K, "union")
        t_vals = torch.log_softmax(torch.randn(B, T, U.shape[-1]), -1)  # teacher log-probs at U (from TeacherScores)
    else:
        t_full = torch.log_softmax(torch.randn(B, T, VOCAB), -1)  # a teacher's full log-probs
    head.weight.requires_grad_(wgrad)
    if wgrad:
        head.weight.grad = torch.zeros_like(head.weight)  # the LM head's .grad exists in training either way
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "naive":
        ls = torch.log_softmax(head(h).float(), -1)
        loss = (t_full.exp() * (t_full - ls)).sum(-1).mean()
    else:
        zS = logits_at(h, head.weight, U.clamp(min=0))  # (B, T, U): logits at the candidates only
        loss = union_topk_kl(zS, t_vals, U >= 0, mask)
    loss.backward()
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"mode": mode, "peak_growth_mib": peak, "loss": loss.item()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--positions", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--child", choices=["naive", "ours"])
    ap.add_argument("--wgrad", action="store_true")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.batch, a.positions, a.hidden, a.top_k, a.wgrad)
        return
    res = {}
    for wgrad in (False, True):
        for mode in ("naive", "ours"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    mode,
                    "--batch",
                    str(a.batch),
                    "--positions",
                    str(a.positions),
                    "--hidden",
                    str(a.hidden),
                    "--top-k",
                    str(a.top_k),
                ]
                + (["--wgrad"] if wgrad else []),
                capture_output=True,
                text=True,
                check=True,
            )
            res[(mode, wgrad)] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mib"]
    print(
        f"OPD loss forward+backward peak memory, B={a.batch} T={a.positions} d={a.hidden} V={VOCAB} k={a.top_k} "
        "(fp32, CPU)"
    )
    print("| what is measured | naive full-vocab KL MiB | union top-k KL MiB | ours/naive |\n|---|---|---|---|")
    for wgrad, label in (
        (False, "loss path (grad w.r.t. hidden states)"),
        (True, "+ LM-head weight gradient (V x d, both paths)"),
    ):
        n, o = res[("naive", wgrad)], res[("ours", wgrad)]
        print(f"| {label} | {n:.0f} | {o:.0f} | {o / n:.3f} |")
        print(f"ratio: OPD loss peak memory, union top-k / full-vocab ({label}) = {o / n:.3f} (lower is better)")


if __name__ == "__main__":
    main()
