"""Pure loss functions. Each docstring gives shapes, reduction, formula and source.

Conventions: ``mask`` is a bool tensor of valid positions; every loss is a mean over valid positions
(token mean) and returns an exact 0 (with a graph) when nothing is valid, never NaN. Computation is in
float32 whatever the input dtype.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

Direction = Literal["forward", "reverse", "jsd"]
Support = Literal["union", "teacher", "student"]


_NEG = -1e4  # a log-value whose exp is 0 in float32 and whose differences stay finite


def _token_mean(per_pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(per_pos * mask) / max(1, sum(mask)); 0 (not NaN) when the mask is empty."""
    m = mask.to(per_pos.dtype)
    return (torch.nan_to_num(per_pos) * m).sum() / m.sum().clamp(min=1.0)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Token-mean next-token cross-entropy.

    logits (B, T, V), labels (B, T) with -100 = ignore; optional per-token ``weights`` (B, T).
    L = sum_t w_t * (-log softmax(z_t)[y_t]) / #valid.
    """
    mask = labels != -100
    # over (B*T, V) rows: the class dimension last (a (B, V, T) view would be copied to that layout, ~3x slower)
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.clamp(min=0).reshape(-1), reduction="none"
    ).view(labels.shape)  # (B, T)
    if weights is not None:
        nll = nll * weights
    return _token_mean(nll, mask)


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    tau: float = 2.0,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Full-vocabulary distillation loss (Hinton et al. 2015; Distil-Whisper, Gandhi et al. 2023).

    student_logits, teacher_logits (B, T, V); mask (B, T); optional per-token ``weights`` (B, T).
    L = (1/|T|) sum_t w_t * tau^2 * KL(softmax(zT_t / tau) || softmax(zS_t / tau)).
    ``teacher_logits`` may equally be teacher log-probs (softmax is shift-invariant).
    """
    lt = F.log_softmax(teacher_logits.float() / tau, dim=-1)
    ls = F.log_softmax(student_logits.float() / tau, dim=-1)
    kl = (lt.exp() * (lt - ls)).sum(-1) * tau**2  # (B, T)
    if weights is not None:
        kl = kl * weights
    return _token_mean(kl, mask)


def sparse_kd_kl(
    student_logits: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    mask: torch.Tensor,
    tau: float = 2.0,
    *,
    weights: Optional[torch.Tensor] = None,
    teacher_log_z: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Distillation from a cached teacher top-k (e.g. :mod:`common.teachers.cache`).

    student_logits (B, T, V); teacher_topk_ids / _logprobs (B, T, k): the teacher's top-k ids and log-probs (at
    temperature 1), ids < 0 (or non-finite log-probs) for absent entries; optional ``weights`` (B, T).

    With ``teacher_log_z`` (B, T) = log sum_V exp(lpT(v) / tau), the teacher's tempered log-partition stored by the
    cache for this tau, the teacher's tempered distribution is exact on its top-k K and the rest of the vocabulary is
    one bucket R; the student's tempered distribution pS = softmax_V(zS / tau) is coarsened the same way:
        qT(v) = exp(lpT(v) / tau - log Z),  qT(R) = 1 - sum_K qT,   pS(R) = 1 - sum_K pS
        L = (1/|T|) sum_t w_t tau^2 [ sum_{v in K} qT(v) (log qT(v) - log pS(v)) + qT(R) (log qT(R) - log pS(R)) ]
    the KL between the two distributions on k + 1 outcomes: a lower bound of the full tempered KL (:func:`kd_kl`),
    equal to it when K holds the whole vocabulary.

    Without it (older caches): the teacher's tempered top-k renormalised, qT = softmax_K(lpT / tau), against the
    student's full pS: L = (1/|T|) sum_t w_t tau^2 sum_{v in K} qT(v) (log qT(v) - log pS(v)); with k = V this also
    equals :func:`kd_kl`.

    Positions without a valid entry (padding, the forced prefix) contribute nothing, to the loss or the gradient.
    """
    valid = (teacher_topk_ids >= 0) & torch.isfinite(teacher_topk_logprobs)  # (B, T, k)
    has = mask & valid.any(-1)
    ls = F.log_softmax(student_logits.float() / tau, dim=-1).gather(-1, teacher_topk_ids.clamp(min=0))  # (B, T, k)
    # invalid entries get a finite stand-in before any exp/log, so no inf - inf or 0 * nan reaches the gradient
    lp = torch.where(valid, teacher_topk_logprobs.float() / tau, torch.full_like(ls, _NEG))
    if teacher_log_z is None:
        lq = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
        kl = (valid * lq.exp() * (lq - ls)).sum(-1)
    else:
        log_z = torch.where(has, teacher_log_z.float(), torch.zeros_like(teacher_log_z.float()))
        lq = torch.where(valid, lp - log_z[..., None], torch.full_like(lp, _NEG))
        q = valid * lq.exp()
        q_rest = (1.0 - q.sum(-1)).clamp(min=0.0)
        p_rest = (1.0 - (valid * ls.exp()).sum(-1)).clamp(min=1e-12)
        kl = (q * (lq - ls)).sum(-1) + torch.xlogy(q_rest, q_rest) - q_rest * p_rest.log()
    kl = kl * tau**2
    if weights is not None:
        kl = kl * weights
    return _token_mean(torch.where(has, kl, torch.zeros_like(kl)), has)


def union_topk_kl(
    student_cand_logits: torch.Tensor,
    teacher_cand_values: torch.Tensor,
    cand_mask: torch.Tensor,
    mask: torch.Tensor,
    tau: float = 1.0,
    direction: Direction = "forward",
    beta: float = 0.5,
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """Ark-ASR on-policy distillation loss over a per-position candidate set U_t (arXiv 2605.28139, sec. 3).

    student_cand_logits (B, T, U): the student's logits z_S at the candidate ids (gathered, not a full softmax);
    teacher_cand_values (B, T, U): the teacher's log-probs at the same ids; cand_mask (B, T, U): real candidates
    with a finite teacher value; mask (B, T): valid positions. Positions with fewer than 2 candidates are left out.
    With q_T = softmax_{v in U_t}(lpT(v) / tau) and q_S = softmax_{v in U_t}(zS(v) / tau):
        forward:  L = (1/|T|) sum_t tau^2 sum_v q_T (log q_T - log q_S)
        reverse:  L = (1/|T|) sum_t tau^2 sum_v q_S (log q_S - log q_T)
        jsd:      L = (1/|T|) sum_t tau^2 [beta KL(q_T || M) + (1 - beta) KL(q_S || M)],  M = beta q_T + (1 - beta) q_S
    |T| = number of kept positions. Forward gradient w.r.t. z_S on U_t: (tau / |T|) (q_S - q_T).
    ``reduction="none"``: the per-position terms tau^2 KL_t as (B, T), zero where a position is not kept.
    """
    cm = cand_mask & torch.isfinite(teacher_cand_values)
    keep = mask & (cm.sum(-1) >= 2)
    neg = torch.finfo(torch.float32).min
    lt = torch.where(cm, teacher_cand_values.float() / tau, torch.full_like(teacher_cand_values.float(), neg))
    lsv = torch.where(cm, student_cand_logits.float() / tau, torch.full_like(student_cand_logits.float(), neg))
    lt = torch.log_softmax(lt, dim=-1)
    ls = torch.log_softmax(lsv, dim=-1)
    qt, qs = lt.exp() * cm, ls.exp() * cm
    zero = torch.zeros_like(lt)
    if direction == "forward":
        per = torch.where(cm, qt * (lt - ls), zero).sum(-1)
    elif direction == "reverse":
        per = torch.where(cm, qs * (ls - lt), zero).sum(-1)
    elif direction == "jsd":
        m = beta * qt + (1 - beta) * qs
        lm = torch.log(m.clamp(min=1e-30))
        per = beta * torch.where(cm, qt * (lt - lm), zero).sum(-1) + (1 - beta) * torch.where(
            cm, qs * (ls - lm), zero
        ).sum(-1)
    else:
        raise ValueError(f"unknown direction {direction!r} (forward, reverse, jsd)")
    if reduction == "none":
        return torch.where(keep, per * tau**2, torch.zeros_like(per))
    return _token_mean(per * tau**2, keep)


class _CandidateLogits(torch.autograd.Function):
    """z[n, u] = <h[n], W[ids[n, u]]>, chunked over rows; backward recomputes the gathered rows chunk by chunk,
    so no (N, U, d) tensor is kept between forward and backward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, chunk: int) -> torch.Tensor:
        z = h.new_empty(ids.shape)
        for s in range(0, h.shape[0], chunk):
            z[s : s + chunk] = torch.einsum("nd,nud->nu", h[s : s + chunk], weight[ids[s : s + chunk]].to(h.dtype))
        ctx.save_for_backward(h, weight, ids)
        ctx.chunk = chunk
        return z

    @staticmethod
    def backward(ctx, gz: torch.Tensor):
        h, weight, ids = ctx.saved_tensors
        gh = torch.zeros_like(h) if ctx.needs_input_grad[0] else None
        gw = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for s in range(0, h.shape[0], ctx.chunk):
            g, i = gz[s : s + ctx.chunk], ids[s : s + ctx.chunk]
            if gh is not None:
                gh[s : s + ctx.chunk] = torch.einsum("nu,nud->nd", g, weight[i].to(g.dtype))
            if gw is not None:
                rows = (g[..., None] * h[s : s + ctx.chunk, None, :]).reshape(-1, h.shape[-1])
                gw.index_add_(0, i.reshape(-1), rows.to(gw.dtype))
        return gh, gw, None, None


def logits_at(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, bias: Optional[torch.Tensor] = None, chunk: int = 64
) -> torch.Tensor:
    """Student logits only at candidate ids, never over the vocabulary.

    hidden (B, T, d), LM-head weight (V, d), ids (B, T, U) with ids >= 0 -> (B, T, U):
    z[b, t, u] = hidden[b, t] . weight[ids[b, t, u]] (+ bias[ids]). Memory O(chunk * U * d) beyond the inputs.
    """
    B, T, U = ids.shape
    z = _CandidateLogits.apply(hidden.reshape(B * T, -1), weight, ids.reshape(B * T, U), chunk).reshape(B, T, U)
    return z + bias[ids] if bias is not None else z


def build_candidates(
    student_topk: torch.Tensor, teacher_topk: torch.Tensor, support: Support = "union"
) -> torch.Tensor:
    """Candidate ids U_t per position: union S_t ∪ K_t (deduplicated), K_t alone, or S_t alone.

    student_topk (B, T, ks) and teacher_topk (B, T, kt) in the student vocabulary, -1 = absent (e.g. a teacher
    id with no student counterpart). Returns (B, T, U) long, -1 padded, with each id at most once per row.
    """
    if support == "teacher":
        ids = teacher_topk
    elif support == "student":
        ids = student_topk
    elif support == "union":
        ids = torch.cat([student_topk, teacher_topk], dim=-1)
    else:
        raise ValueError(f"unknown support {support!r} (union, teacher, student)")
    s, _ = ids.sort(dim=-1, descending=True)  # duplicates become neighbours; -1 go last
    dup = torch.zeros_like(s, dtype=torch.bool)
    dup[..., 1:] = s[..., 1:] == s[..., :-1]
    s = torch.where(dup, torch.full_like(s, -1), s)
    s, _ = s.sort(dim=-1, descending=True)
    width = int((s >= 0).sum(-1).max().clamp(min=1))
    return s[..., :width]
