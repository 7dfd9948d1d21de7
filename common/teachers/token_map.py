"""Teacher <-> student token mapping by identical token strings.

Two ids correspond when their vocabulary strings are identical (after the tokenizers' own byte-level
representation, e.g. 'Ġthe' in both GPT-2-style vocabularies). Ids without a counterpart map to -1
and are dropped by the losses; how many are dropped is counted. Student texts are re-tokenised by the
teacher tokenizer, and the mismatch rate says how often the two tokenisations differ.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


def control_token_ids(tokenizer, keep: Iterable[int] = (), vocab_size: int | None = None) -> list[int]:
    """Every id of a tokenizer that is not transcript text, minus ``keep`` (the stop token): its special ids, every
    added token (Whisper's language/task/timestamp-mode tokens, Qwen3's ``<think>``, tool and FIM tokens, which the
    tokenizers do not all flag as special) and, with ``vocab_size`` (the model's output size), the ids past the
    tokenizer (Whisper's timestamp ids, padding rows of an LLM's embedding)."""
    ids = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if vocab_size is not None:
        ids |= set(range(len(tokenizer), vocab_size))
    return sorted(ids - set(keep))


@dataclass
class RetokenizeStats:
    n_texts: int = 0
    n_mismatched: int = 0  # texts whose teacher tokenisation differs from the student's token strings

    @property
    def mismatch_rate(self) -> float:
        return self.n_mismatched / self.n_texts if self.n_texts else 0.0


def _lookup(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """table[ids] with -1 for ids outside the table (negative or past its end)."""
    out = table.to(ids.device)[ids.clamp(min=0, max=len(table) - 1)]
    inside = (ids >= 0) & (ids < len(table))
    return torch.where(inside, out, torch.full_like(out, -1))


class TokenMap:
    """Lookup tables between two vocabularies (ids mapping to -1 have no counterpart)."""

    def __init__(self, teacher_tokenizer, student_tokenizer, extra: dict[int, int] | None = None) -> None:
        """``extra``: teacher id -> student id pairs that correspond by role, not by string (stop tokens). The map stays
        one-to-one: a pair in ``extra`` replaces any string match of either id (e.g. a Whisper-tokenizer student's
        ``<|endoftext|>`` no longer also stands for the teacher's stop token once ``<|im_end|>`` does), so no teacher
        probability is counted twice in a candidate set."""
        self.teacher_tokenizer, self.student_tokenizer = teacher_tokenizer, student_tokenizer
        t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
        nt = max(t_vocab.values()) + 1
        ns = max(s_vocab.values()) + 1
        self.t2s = torch.full((nt,), -1, dtype=torch.long)
        self.s2t = torch.full((ns,), -1, dtype=torch.long)
        for tok, tid in t_vocab.items():
            sid = s_vocab.get(tok)
            if sid is not None:
                self.t2s[tid] = sid
                self.s2t[sid] = tid
        for tid, sid in (extra or {}).items():
            self.s2t[self.s2t == tid] = -1  # no other student id stands for this teacher id
            self.t2s[self.t2s == sid] = -1  # and no other teacher id for this student id
            self.t2s[tid], self.s2t[sid] = sid, tid
        self.n_teacher, self.n_student = len(t_vocab), len(s_vocab)
        self.n_shared = int((self.t2s >= 0).sum())
        self.stats = RetokenizeStats()

    @property
    def teacher_coverage(self) -> float:
        """Fraction of the teacher vocabulary with a student counterpart."""
        return self.n_shared / self.n_teacher

    @property
    def is_identity(self) -> bool:
        return self.n_teacher == self.n_student == self.n_shared and bool(
            (self.t2s[: self.n_teacher] == torch.arange(self.n_teacher)).all()
        )

    def to_student(self, teacher_ids: torch.Tensor) -> torch.Tensor:
        """Map teacher ids (any shape) to student ids; -1 where there is none: negative inputs and ids past the
        teacher tokenizer (Whisper's timestamp ids live only in the model's output layer)."""
        return _lookup(self.t2s, teacher_ids)

    def to_teacher(self, student_ids: torch.Tensor) -> torch.Tensor:
        """Map student ids to teacher ids; -1 where there is none."""
        return _lookup(self.s2t, student_ids)

    @property
    def is_one_to_one(self) -> bool:
        """No two ids of one side map to the same id of the other."""
        s, t = self.t2s[self.t2s >= 0], self.s2t[self.s2t >= 0]
        return len(s.unique()) == len(s) and len(t.unique()) == len(t)

    def record(self, student_ids: list[int], teacher_ids: list[int]) -> bool:
        """Count whether the teacher's tokenisation of a text equals the student's (mapped id by id)."""
        same = (
            self.to_teacher(torch.tensor(student_ids, dtype=torch.long)).tolist() == list(teacher_ids)
            if student_ids
            else not teacher_ids
        )
        self.stats.n_texts += 1
        self.stats.n_mismatched += int(not same)
        return same

    def retokenize(self, student_ids: list[int], text: str | None = None) -> list[int]:
        """Teacher ids of the student's transcript (decoded text re-encoded), counting mismatches."""
        if text is None:
            text = self.student_tokenizer.decode(student_ids, skip_special_tokens=True)
        t_ids = self.teacher_tokenizer.encode(text, add_special_tokens=False)
        self.record(student_ids, t_ids)
        return t_ids
