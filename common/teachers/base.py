"""The ``Teacher`` protocol and the memory-aware scoring primitive shared by every teacher.

A teacher is always frozen (``eval()``, ``requires_grad_(False)``), lives outside the optimizer and is
never part of a student checkpoint. Scoring a target sequence teacher-forced returns, per target
position, the teacher's top-k ids and log-probs, the log-prob of the target token and a validity mask;
:meth:`TeacherScores.gather` gives the log-prob of any other ids (the student's candidates) exactly,
from the kept final hidden states, without ever holding a (B, T, V) tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


@dataclass
class TeacherScores:
    """Teacher-forced scores of B target sequences padded to T positions (teacher vocabulary ids).

    topk_ids: (B, T, k) long; topk_logprobs: (B, T, k) float32, sorted descending;
    target_logprobs: (B, T) float32; mask: (B, T) bool, True at real target positions.
    hidden: (B, T, d) the final hidden states at those positions; lse: (B, T) float32 log-normaliser.
    """

    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    target_logprobs: torch.Tensor
    mask: torch.Tensor
    hidden: torch.Tensor
    lse: torch.Tensor
    lm_head: torch.nn.Module

    @torch.no_grad()
    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        """log p_teacher(ids) at every position: ids (B, T, m) -> (B, T, m) float32 (exact, O(B T m d))."""
        return gather_logprobs(self.hidden, self.lm_head, self.lse, ids)


def gather_logprobs(
    hidden: torch.Tensor, lm_head: torch.nn.Module, lse: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """log_softmax(lm_head(hidden))[..., ids] computed only at ``ids``: (B,T,d), (B,T), (B,T,m) -> (B,T,m)."""
    w = lm_head.weight[ids]  # (B, T, m, d)
    logits = torch.einsum("btd,btmd->btm", hidden.to(w.dtype), w).float()
    if getattr(lm_head, "bias", None) is not None:
        logits = logits + lm_head.bias[ids].float()
    return logits - lse.unsqueeze(-1)


@torch.no_grad()
def score_hidden(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    targets: torch.Tensor,
    mask: torch.Tensor,
    top_k: int,
    chunk_positions: int = 256,
) -> TeacherScores:
    """Top-k, target log-prob and log-normaliser from final hidden states, position chunk by chunk.

    hidden (B, T, d), targets (B, T) long, mask (B, T) bool. Only the valid positions are projected to the
    vocabulary, ``chunk_positions`` at a time in float32, so peak memory is chunk x V floats, not B x T x V.
    """
    B, T, _ = hidden.shape
    k = top_k
    topk_ids = torch.zeros(B, T, k, dtype=torch.long, device=hidden.device)
    topk_lp = torch.full((B, T, k), float("-inf"), device=hidden.device)
    tgt_lp = torch.zeros(B, T, device=hidden.device)
    lse = torch.zeros(B, T, device=hidden.device)
    idx = mask.nonzero(as_tuple=False)  # (N, 2)
    for s in range(0, idx.shape[0], chunk_positions):
        b, t = idx[s : s + chunk_positions].unbind(-1)
        logits = lm_head(hidden[b, t]).float()  # (n, V)
        logp = torch.log_softmax(logits, dim=-1)  # (n, V), this chunk only
        v, i = logp.topk(k, dim=-1)
        topk_ids[b, t], topk_lp[b, t] = i, v
        tgt_lp[b, t] = logp.gather(-1, targets[b, t, None]).squeeze(-1)
        lse[b, t] = logits[:, 0] - logp[:, 0]  # the normaliser log_softmax used
        del logits, logp
    return TeacherScores(topk_ids, topk_lp, tgt_lp, mask, hidden * mask[..., None], lse, lm_head)


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


@dataclass
class Generation:
    texts: list[str]
    token_ids: list[list[int]]  # generated transcript ids (teacher vocabulary), without prefix/stop tokens


class Teacher(Protocol):
    """What both methods need from a frozen teacher."""

    tokenizer: Any
    processor: Any

    def prepare(self, audios: Sequence[np.ndarray], languages: Sequence[str]) -> dict[str, Any]:
        """Audio -> the teacher's own input features (its processor)."""

    def encode_text(self, text: str, language: str) -> list[int]:
        """A transcript -> target ids in the teacher vocabulary, ending with the teacher's stop token."""

    def generate(self, batch: dict[str, Any], max_new_tokens: int = 128, num_beams: int = 1) -> Generation: ...

    def score(self, batch: dict[str, Any], targets: Sequence[Sequence[int]], top_k: int) -> TeacherScores: ...


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """eval() and no grad: a teacher never trains."""
    model.eval()
    model.requires_grad_(False)
    return model
