"""Teacher-forced scoring shared by every teacher (and the student's padding helpers): the memory-aware primitive.

Scoring a target sequence teacher-forced returns, per target position, the teacher's top-k ids and log-probs, the
log-prob of the target token and a validity mask; :meth:`TeacherScores.gather` gives the log-prob of any other ids
(the student's candidates) exactly, from the kept final hidden states, without ever holding a (B, T, V) tensor.
The contract a teacher fulfils is :class:`common.teachers.protocol.Teacher`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class TeacherScores:
    """Teacher-forced scores of B target sequences padded to T positions (teacher vocabulary ids).

    topk_ids: (B, T, k) long; topk_logprobs: (B, T, k) float32, sorted descending;
    target_logprobs: (B, T) float32; mask: (B, T) bool, True at real target positions.
    hidden: (B, T, d) the final hidden states at those positions; lse: (B, T) float32 log-normaliser.
    blocked: (V,) bool or None: vocabulary entries masked out before the top-k and the log-softmax (the teacher's
    control tokens, when scored with ``block_control``); their log-prob is -inf everywhere, ``gather`` included.
    log_z_tau: (B, T) float32 or None: log sum_V exp(logp(v) / tau) for the ``tau`` scored with (what tempered KD
    from a stored top-k needs: the exact tempered mass of the top-k, and so of the rest of the vocabulary).
    """

    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    target_logprobs: torch.Tensor
    mask: torch.Tensor
    hidden: torch.Tensor
    lse: torch.Tensor
    lm_head: torch.nn.Module
    blocked: torch.Tensor | None = None
    log_z_tau: torch.Tensor | None = None

    @torch.no_grad()
    def gather(self, ids: torch.Tensor, T: int | None = None) -> torch.Tensor:
        """log p_teacher(ids) at the first ``T`` positions (all by default): ids (B, T, m) -> (B, T, m) float32
        (exact, O(B T m d)); -inf at blocked ids."""
        T = self.hidden.shape[1] if T is None else T
        return gather_logprobs(self.hidden[:, :T], self.lm_head, self.lse[:, :T], ids, self.blocked)


def gather_logprobs(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    lse: torch.Tensor,
    ids: torch.Tensor,
    blocked: torch.Tensor | None = None,
) -> torch.Tensor:
    """log_softmax(lm_head(hidden))[..., ids] computed only at ``ids``: (B,T,d), (B,T), (B,T,m) -> (B,T,m).
    ``blocked`` (V,) bool: ids excluded from the distribution (``lse`` was computed without them) get -inf."""
    w = lm_head.weight[ids]  # (B, T, m, d)
    logits = torch.einsum("btd,btmd->btm", hidden.to(w.dtype), w).float()
    if getattr(lm_head, "bias", None) is not None:
        logits = logits + lm_head.bias[ids].float()
    out = logits - lse.unsqueeze(-1)
    if blocked is not None:
        out = out.masked_fill(blocked.to(ids.device)[ids], float("-inf"))
    return out


def vocab_mask(ids: Sequence[int], size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(size,) bool, True at ``ids`` (those below ``size``)."""
    mask = torch.zeros(size, dtype=torch.bool, device=device)
    mask[torch.tensor([i for i in ids if 0 <= i < size], dtype=torch.long, device=device)] = True
    return mask


@torch.no_grad()
def score_hidden(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    targets: torch.Tensor,
    mask: torch.Tensor,
    top_k: int,
    chunk_positions: int = 256,
    blocked: torch.Tensor | None = None,
    tau: float | None = None,
) -> TeacherScores:
    """Top-k, target log-prob and log-normaliser from final hidden states, position chunk by chunk.

    hidden (B, T, d), targets (B, T) long, mask (B, T) bool. Only the valid positions are projected to the
    vocabulary, ``chunk_positions`` at a time in float32, so peak memory is chunk x V floats, not B x T x V.
    ``blocked`` (V,) bool: entries set to -inf before the log-softmax and the top-k, so the distribution is
    renormalised over the rest (the Ark-ASR authors' trainer does this with the teacher's control tokens).
    ``tau``: also the tempered log-partition log sum_V exp(logp / tau) per position (``log_z_tau``).
    """
    B, T, _ = hidden.shape
    k = top_k
    topk_ids = torch.zeros(B, T, k, dtype=torch.long, device=hidden.device)
    topk_lp = torch.full((B, T, k), float("-inf"), device=hidden.device)
    tgt_lp = torch.zeros(B, T, device=hidden.device)
    lse = torch.zeros(B, T, device=hidden.device)
    log_z = torch.zeros(B, T, device=hidden.device) if tau is not None else None
    idx = mask.nonzero(as_tuple=False)  # (N, 2)
    for s in range(0, idx.shape[0], chunk_positions):
        b, t = idx[s : s + chunk_positions].unbind(-1)
        logits = lm_head(hidden[b, t]).float()  # (n, V)
        if blocked is not None:
            logits = logits.masked_fill(blocked.to(logits.device), float("-inf"))
        norm = torch.logsumexp(logits, dim=-1)  # (n,)
        logp = logits - norm[:, None]  # (n, V), this chunk only
        v, i = logp.topk(k, dim=-1)
        topk_ids[b, t], topk_lp[b, t] = i, v
        tgt_lp[b, t] = logp.gather(-1, targets[b, t, None]).squeeze(-1)
        lse[b, t] = norm
        if log_z is not None:
            log_z[b, t] = torch.logsumexp(logp / tau, dim=-1)
        del logits, logp
    return TeacherScores(topk_ids, topk_lp, tgt_lp, mask, hidden * mask[..., None], lse, lm_head, blocked, log_z)


def right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing rows -> (B, L) ids right-padded with ``pad`` and the (B, L) attention mask.

    Right padding keeps every real token at its natural position 0..n-1 (no position-id bookkeeping)."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        att[i, : len(r)] = 1
    return ids, att


def predicting_states(hidden: torch.Tensor, prefix_lens: Sequence[int], T: int) -> torch.Tensor:
    """(B, L, d) final states of rows ``prefix + target[:-1]`` -> (B, T, d): entry j is the state that predicts
    target j,
    i.e. position len(prefix) - 1 + j of its row (clamped inside the row for padded targets)."""
    start = torch.tensor([n - 1 for n in prefix_lens], device=hidden.device)
    pos = (start[:, None] + torch.arange(T, device=hidden.device)[None]).clamp(max=hidden.shape[1] - 1)
    return hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))


def pad_targets(targets: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """List of id lists -> (B, T) padded ids and (B, T) bool mask."""
    T = max(1, max(len(t) for t in targets))
    ids = torch.full((len(targets), T), pad, dtype=torch.long)
    mask = torch.zeros((len(targets), T), dtype=torch.bool)
    for i, t in enumerate(targets):
        ids[i, : len(t)] = torch.tensor(list(t), dtype=torch.long)
        mask[i, : len(t)] = True
    return ids, mask


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """eval() and no grad: a teacher never trains."""
    model.eval()
    model.requires_grad_(False)
    return model
