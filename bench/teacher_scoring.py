"""Peak memory of teacher scoring at Qwen3-ASR-1.7B size: our path vs a naive full-vocabulary log-softmax.

Both start from the same final hidden states of a right-padded batch (B utterances, S sequence positions
of prompt + audio + transcript, of which T are transcript positions) and the real vocabulary size
(151,936), with random fp32 weights (hidden 2048, Qwen3-ASR-1.7B's LM). The transformer body is the same
for both paths and left out.
  naive: logits = lm_head(all S positions) in fp32 -> log_softmax -> gather top-k / targets
  ours:  common.teachers.scoring.score_hidden on the T transcript positions, in chunks of 256 positions
Each path runs in its own fresh process; the figure is the growth of the peak resident set (ru_maxrss)
during the scoring call. Usage: python bench/teacher_scoring.py [--batch 8] [--seq 230] [--targets 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

VOCAB, HIDDEN = 151_936, 2048


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(mode: str, B: int, S: int, T: int, k: int) -> None:
    import torch

    from common.teachers.scoring import score_hidden

    torch.manual_seed(0)
    lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    lm_head.requires_grad_(False)
    hidden = torch.randn(B, S, HIDDEN)
    targets = torch.randint(0, VOCAB, (B, T))
    start = S - T
    mask = torch.ones(B, T, dtype=torch.bool)
    base = _peak_kib()
    with torch.no_grad():
        if mode == "naive":
            logp = torch.log_softmax(lm_head(hidden).float(), dim=-1)  # (B, S, V) twice over
            sel = logp[:, start:]
            top = sel.topk(k, -1)
            tgt = sel.gather(-1, targets[..., None])
            out = (top.values.sum() + tgt.sum()).item()
        else:
            sc = score_hidden(hidden[:, start:], lm_head, targets, mask, k)
            out = (sc.topk_logprobs.sum() + sc.target_logprobs.sum()).item()
    print(json.dumps({"mode": mode, "peak_growth_mib": (_peak_kib() - base) / 1024, "check": out}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--seq", type=int, default=230, help="positions per row: prompt + ~10 s of audio tokens + transcript"
    )
    ap.add_argument("--targets", type=int, default=64, help="transcript positions scored per row")
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--child", choices=["naive", "ours"])
    a = ap.parse_args()
    if a.child:
        child(a.child, a.batch, a.seq, a.targets, a.top_k)
        return
    res = {}
    for mode in ("naive", "ours"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--batch",
                str(a.batch),
                "--seq",
                str(a.seq),
                "--targets",
                str(a.targets),
                "--top-k",
                str(a.top_k),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    n, o = res["naive"]["peak_growth_mib"], res["ours"]["peak_growth_mib"]
    print(
        f"teacher scoring peak memory, B={a.batch} S={a.seq} T={a.targets} V={VOCAB} d={HIDDEN} k={a.top_k} (fp32, CPU)"
    )
    print(
        f"| path | peak growth MiB |\n|---|---|\n| naive full-vocab log-softmax | {n:.0f} |\n"
        f"| ours (chunked, transcript positions) | {o:.0f} |"
    )
    print(f"ours/naive = {o / n:.3f}")
    print(f"ratio: teacher scoring peak memory, chunked / full-vocab = {o / n:.3f} (lower is better)")


if __name__ == "__main__":
    main()
