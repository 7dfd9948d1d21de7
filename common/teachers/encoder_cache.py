"""Frozen encoders' states kept per utterance across epochs: one mechanism for both methods.

A frozen encoder's output depends on the audio alone, so the states of a training utterance computed in one epoch are
exactly those of the next: Ark-ASR's OPD keeps its Whisper teacher's (``opd.teacher_encoder_cache_mb``), ASKD-Whisper
the shared frozen encoder's (``encoder_cache_mb``). A Whisper encoder pads every clip to 30 s, so on a small corpus
its pass is most of a training step (``bench/kd_step.py``, ``bench/opd_step.py`` measure the saving).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class EncoderStateCache:
    """Encoder states by utterance id, up to ``limit_mb`` of memory (the first utterances that fit are kept; the
    others are recomputed each time, so the result never changes, only the cost)."""

    def __init__(self, limit_mb: float) -> None:
        self.limit = limit_mb * 2**20
        self.bytes = 0
        self._store: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def states(self, ids: Sequence[str], compute: Callable[[list[int]], torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(B, frames, d) states of the utterances ``ids``: cached ones from memory, the others from
        ``compute(positions)`` (the batch positions to encode, in order) and kept while the budget allows. Returns the
        states and the number of cache hits."""
        missing = [i for i, u in enumerate(ids) if u not in self._store]
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            enc = compute(missing)
            for j, i in enumerate(missing):
                fresh[ids[i]] = enc[j]
                n = enc[j].numel() * enc[j].element_size()
                if self.bytes + n <= self.limit:
                    self._store[ids[i]] = enc[j].clone()
                    self.bytes += n
        return torch.stack([fresh[u] if u in fresh else self._store[u] for u in ids]), len(ids) - len(missing)
