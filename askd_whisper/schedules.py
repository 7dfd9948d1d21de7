"""Curriculum schedules of ASKD-Whisper (pure functions of training progress).

Phase A teacher weight lambda(r), r = step / steps_A in [0, 1] (ASKD-Whisper, arXiv 2601.19919):
    constant:    lambda = l_0
    linear:      lambda = l_min + (l_0 - l_min)(1 - r)
    cosine:      lambda = l_min + 0.5 (l_0 - l_min)(1 + cos(pi r))
    exponential: lambda = l_min + (l_0 - l_min) (gamma^(n r) - gamma^n) / (1 - gamma^n),   n = exp_decays
    step:        lambda = l_min + (l_0 - l_min) (gamma^c(r) - gamma^M) / (1 - gamma^M),
                 c(r) = number of milestones <= r, M = number of milestones
Every schedule is a function of r alone (phase A's length included), starts at l_0 and ends at l_min: exponential
decays by gamma per 1/n of phase A (the paper's gamma^epoch with n = phase-A epochs, renormalised to end at l_min),
step multiplies by gamma at each milestone and reaches l_min at the last.
Phase B self-KD weight beta(r_B), r_B = progress through phase B: constant beta_0, or linear beta_0 -> beta_max.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from askd_whisper.config import CurriculumConfig, SelfKDConfig


def teacher_weight(c: CurriculumConfig, r: float) -> float:
    """lambda at phase-A progress ``r``; the knobs and their defaults are the curriculum config's (one source)."""
    kind, l0, lmin, gamma = c.schedule, c.lambda_0, c.lambda_min, c.gamma
    r = min(1.0, max(0.0, r))
    if kind == "constant":
        return l0
    if kind == "linear":
        return lmin + (l0 - lmin) * (1 - r)
    if kind == "cosine":
        return lmin + 0.5 * (l0 - lmin) * (1 + math.cos(math.pi * r))
    if kind == "exponential":
        end = gamma**c.exp_decays
        return lmin + (l0 - lmin) * (gamma ** (c.exp_decays * r) - end) / (1 - end)
    if kind == "step":
        end = gamma ** len(c.milestones)
        return lmin + (l0 - lmin) * (gamma ** sum(1 for m in c.milestones if r >= m) - end) / (1 - end)
    raise ValueError(f"unknown schedule {kind!r}")


def self_kd_weight(sk: SelfKDConfig, r: float) -> float:
    """beta at phase-B progress ``r`` (the self-KD config's schedule)."""
    r = min(1.0, max(0.0, r))
    return sk.beta_0 if sk.beta_schedule == "constant" else sk.beta_0 + (sk.beta_max - sk.beta_0) * r


def adaptive_token_weights(
    kind: Literal["none", "gating", "confidence"],
    lam: float,
    teacher_top1: torch.Tensor,
    teacher_top1_prob: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Per-token teacher weights w_t (B, T), from the teacher's most likely token and its probability at each position
    (online: argmax / max of the softmax of its logits; cached: the first of its stored top-k):
    none:       w_t = lambda
    gating:     w_t = lambda * 1[argmax pT_t == y_t]   (do not imitate the teacher where it contradicts the label)
    confidence: w_t = lambda * max_v pT_t(v)
    """
    base = torch.full(labels.shape, lam, device=labels.device)
    if kind == "none":
        return base
    if kind == "gating":
        return base * (teacher_top1 == labels).float()
    if kind == "confidence":
        return base * teacher_top1_prob.float()
    raise ValueError(f"unknown adaptive weighting {kind!r}")
