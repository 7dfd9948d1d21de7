"""Curriculum schedules of ASKD-Whisper (pure functions of training progress).

Phase A teacher weight lambda(r), r = step / steps_A in [0, 1] (papers.md sec. 2.2):
    constant:    lambda = l_0
    linear:      lambda = l_min + (l_0 - l_min)(1 - r)
    cosine:      lambda = l_min + 0.5 (l_0 - l_min)(1 + cos(pi r))
    exponential: lambda = max(l_min, l_0 * gamma^epoch)
    step:        lambda = max(l_min, l_0 * gamma^(number of milestones <= r))
Phase B self-KD weight beta(r_B), r_B = progress through phase B: constant beta_0, or linear beta_0 -> beta_max.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch

LambdaSchedule = Literal["constant", "linear", "cosine", "exponential", "step"]


def teacher_weight(kind: LambdaSchedule, r: float, l0: float = 0.9, lmin: float = 0.0, gamma: float = 0.5,
                   epoch: int = 0, milestones: Sequence[float] = (0.5,)) -> float:
    r = min(1.0, max(0.0, r))
    if kind == "constant":
        return l0
    if kind == "linear":
        return lmin + (l0 - lmin) * (1 - r)
    if kind == "cosine":
        return lmin + 0.5 * (l0 - lmin) * (1 + math.cos(math.pi * r))
    if kind == "exponential":
        return max(lmin, l0 * gamma**epoch)
    if kind == "step":
        return max(lmin, l0 * gamma ** sum(1 for m in milestones if r >= m))
    raise ValueError(f"unknown schedule {kind!r}")


def self_kd_weight(kind: Literal["constant", "linear"], r: float, beta0: float, beta_max: float) -> float:
    r = min(1.0, max(0.0, r))
    return beta0 if kind == "constant" else beta0 + (beta_max - beta0) * r


def adaptive_token_weights(kind: Literal["none", "gating", "confidence"], lam: float, teacher_logits: torch.Tensor,
                           labels: torch.Tensor) -> torch.Tensor:
    """Per-token teacher weights w_t (B, T):
    none:       w_t = lambda
    gating:     w_t = lambda * 1[argmax pT_t == y_t]   (do not imitate the teacher where it contradicts the label)
    confidence: w_t = lambda * max_v pT_t(v)
    """
    base = torch.full(labels.shape, lam, device=labels.device)
    if kind == "none":
        return base
    if kind == "gating":
        return base * (teacher_logits.argmax(-1) == labels).float()
    if kind == "confidence":
        return base * torch.softmax(teacher_logits.float(), -1).amax(-1)
    raise ValueError(f"unknown adaptive weighting {kind!r}")
