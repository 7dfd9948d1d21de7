"""Corpus-level WER/CER as a torchmetrics ``Metric`` whose states are summed edit counts.

Error rate = sum(S + D + I) / sum(reference units), never an average of per-utterance rates.
Units are words for English and characters (spaces removed) for Mandarin, chosen per utterance by
its language, so one metric can score a mixed-language set. Both the raw text (only white space
collapsed) and the normalised text (:mod:`common.text`) are scored. States are ``dist_reduce_fx="sum"``
so the DDP result equals the single-process result exactly.

An empty reference is counted (``n_empty_refs``), never dropped: it contributes 0 reference units and
every hypothesis unit as an insertion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer
import torch
from torchmetrics import Metric

from common.text import normalize, units

_COUNTS = ("sub", "del", "ins", "ref_units", "hyp_units")


@dataclass(frozen=True)
class UtteranceScore:
    """Edit counts of one utterance, and its alignment as (op, ref_unit, hyp_unit) triples."""

    sub: int
    dele: int
    ins: int
    ref_units: int
    hyp_units: int
    alignment: tuple[tuple[str, str, str], ...]

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    def as_dict(self) -> dict:
        d = asdict(self)
        d["del"] = d.pop("dele")
        d["alignment"] = [list(a) for a in self.alignment]
        return d


def score_units(ref: Sequence[str], hyp: Sequence[str]) -> UtteranceScore:
    """Levenshtein alignment (jiwer) of two unit sequences."""
    if not ref and not hyp:
        return UtteranceScore(0, 0, 0, 0, 0, ())
    if not ref:
        return UtteranceScore(0, 0, len(hyp), 0, len(hyp), tuple(("I", "", h) for h in hyp))
    out = jiwer.process_words(" ".join(ref), " ".join(hyp)) if hyp else None
    if out is None:
        return UtteranceScore(0, len(ref), 0, len(ref), 0, tuple(("D", r, "") for r in ref))
    ops: list[tuple[str, str, str]] = []
    code = {"equal": "C", "substitute": "S", "delete": "D", "insert": "I"}
    for chunk in out.alignments[0]:
        rs, hs = list(ref[chunk.ref_start_idx : chunk.ref_end_idx]), list(hyp[chunk.hyp_start_idx : chunk.hyp_end_idx])
        n = max(len(rs), len(hs))
        for i in range(n):
            ops.append((code[chunk.type], rs[i] if i < len(rs) else "", hs[i] if i < len(hs) else ""))
    return UtteranceScore(out.substitutions, out.deletions, out.insertions, len(ref), len(hyp), tuple(ops))


def raw_text(text: str) -> str:
    """The 'raw' scoring view: white space collapsed, nothing else changed."""
    return " ".join(text.split())


def score_utterance(ref: str, hyp: str, language: str, normalised: bool = True) -> UtteranceScore:
    """Score one utterance in the units of ``language`` (after normalisation when ``normalised``)."""
    view = (lambda t: normalize(t, language)) if normalised else raw_text
    return score_units(units(view(ref), language), units(view(hyp), language))


class ErrorRate(Metric):
    """Corpus WER/CER with summed, rank-synced counts (raw and normalised views).

    ``update(hyps, refs, languages)``; ``compute()`` returns a dict of tensors:
    ``error_rate`` (normalised), ``raw_error_rate``, the normalised counts ``sub``, ``del``, ``ins``,
    ``ref_units``, ``hyp_units``, and ``n_utts``, ``n_empty_refs``.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for view in ("norm", "raw"):
            for c in _COUNTS:
                self.add_state(f"{view}_{c}", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_utts", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_empty_refs", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, hyps: Sequence[str], refs: Sequence[str], languages: Sequence[str] | str) -> None:  # type: ignore[override]
        if isinstance(languages, str):
            languages = [languages] * len(refs)
        if not (len(hyps) == len(refs) == len(languages)):
            raise ValueError(
                f"hyps ({len(hyps)}), refs ({len(refs)}) and languages ({len(languages)}) differ in length"
            )
        for hyp, ref, lang in zip(hyps, refs, languages):
            self.add(score_utterance(ref, hyp, lang), score_utterance(ref, hyp, lang, normalised=False))

    def add(self, norm: UtteranceScore, raw: UtteranceScore) -> None:
        """Add one utterance already scored in both views (callers that keep per-utterance alignments use this,
        so nothing is aligned twice)."""
        for view, s in (("norm", norm), ("raw", raw)):
            for c, v in zip(_COUNTS, (s.sub, s.dele, s.ins, s.ref_units, s.hyp_units)):
                setattr(self, f"{view}_{c}", getattr(self, f"{view}_{c}") + v)
        if norm.ref_units == 0:
            self.n_empty_refs += 1
        self.n_utts += 1
        # what torchmetrics' wrapped update() does: count the update, drop a cached compute() result
        self._update_count += 1
        self._computed = None

    @staticmethod
    def _rate(errors: torch.Tensor, ref_units: torch.Tensor) -> torch.Tensor:
        # With no reference units the rate is undefined: NaN, never a silent 0.
        return errors.double() / ref_units.double() if ref_units > 0 else torch.tensor(float("nan"), dtype=torch.double)

    def compute(self) -> dict[str, torch.Tensor]:
        norm_err = self.norm_sub + self.norm_del + self.norm_ins
        raw_err = self.raw_sub + self.raw_del + self.raw_ins
        return {
            "error_rate": self._rate(norm_err, self.norm_ref_units),
            "raw_error_rate": self._rate(raw_err, self.raw_ref_units),
            "sub": self.norm_sub,
            "del": self.norm_del,
            "ins": self.norm_ins,
            "ref_units": self.norm_ref_units,
            "hyp_units": self.norm_hyp_units,
            "n_utts": self.n_utts,
            "n_empty_refs": self.n_empty_refs,
        }
