"""Teacher/student latency of two Whisper models (ASKD-Whisper, arXiv 2601.19919, latency protocol):
batch 1, greedy, exactly N generated tokens, same device and dtype,
one process, alternating runs, medians. Latency = encoder pass + N decoding steps; the student's encoder is the
teacher's (copied, frozen), so the encoder is timed once and counted for both. Used by bench/latency.py and the demo.
"""

from __future__ import annotations

import statistics
import time

import torch


def _time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


@torch.no_grad()
def measure(teacher, student, feats: torch.Tensor, n_tokens: int, repeats: int) -> dict[str, float]:
    from transformers.modeling_outputs import BaseModelOutput

    enc = teacher.model.encoder(feats).last_hidden_state
    kw = dict(min_new_tokens=n_tokens, max_new_tokens=n_tokens, do_sample=False, num_beams=1)
    gen = lambda m: m.generate(encoder_outputs=BaseModelOutput(last_hidden_state=enc), **kw)  # noqa: E731
    gen(teacher), gen(student)  # warm-up
    t_enc = _time(lambda: teacher.model.encoder(feats), repeats)
    d_t, d_s = [], []
    for _ in range(repeats):  # alternate so drifts in machine load hit both
        d_t.append(_time(lambda: gen(teacher), 1))
        d_s.append(_time(lambda: gen(student), 1))
    dt, ds = statistics.median(d_t), statistics.median(d_s)
    return {"encoder": t_enc, "dec_teacher": dt, "dec_student": ds, "teacher": t_enc + dt, "student": t_enc + ds}
