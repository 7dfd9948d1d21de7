"""The ``Teacher`` contract: everything the two methods call on a frozen teacher (Whisper, Qwen3-ASR).

A teacher is always frozen (``eval()``, ``requires_grad_(False)``), lives outside the optimizer and is never part of a
student checkpoint. Both methods and the shared layer (teacher cache, validation samples, evaluation, placement) use
only what is named here; ``tests/test_teachers.py`` checks that both teachers implement it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from common.teachers.scoring import TeacherScores


@dataclass
class Generation:
    texts: list[str]
    token_ids: list[list[int]]  # generated transcript ids (teacher vocabulary), without prefix/stop tokens


@runtime_checkable
class Teacher(Protocol):
    """What both methods need from a frozen teacher."""

    model: torch.nn.Module
    """The Hugging Face model (placement and sharding move it; nothing else reaches inside it)."""
    stop_id: int
    """The teacher's stop token (its transcripts' last target id)."""
    reusable_encoder: bool
    """True when :meth:`encode` exists and its states depend on the audio alone, so they may be computed once and
    passed back as ``encoder_out`` (a Whisper teacher; Qwen3-ASR merges audio into its prompt and cannot)."""

    @property
    def device(self) -> torch.device: ...

    def encode(self, batch: dict[str, Any]) -> torch.Tensor:
        """The encoder states of a prepared batch (only where ``reusable_encoder``)."""

    def decoder_logits(self, encoder_out: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Full-vocabulary logits (B, L, V) of the decoder teacher-forced on ``batch["decoder_input_ids"]`` /
        ``["decoder_attention_mask"]`` (the student's own label layout, for online KD over the whole vocabulary);
        only where ``reusable_encoder``."""

    tokenizer: Any
    processor: Any

    def prepare(
        self, audios: Sequence[np.ndarray], languages: Sequence[str], feature_cache_mb: float = 0.0
    ) -> dict[str, Any]:
        """Audio -> the teacher's own input features (its processor). ``feature_cache_mb``: a teacher whose front end
        gives a clip the same features in any batch (Whisper's fixed 30 s window) keeps them per clip in the process's
        store (``common.data.collate.whisper_log_mel``); one that pads to the batch ignores it."""

    def encode_text(self, text: str, language: str) -> list[int]:
        """A transcript -> target ids in the teacher vocabulary, ending with the teacher's stop token."""

    def generate(self, batch: dict[str, Any], max_new_tokens: int = 128, num_beams: int = 1) -> Generation: ...

    control_ids: list[int]
    """Ids that are never transcript text (every special or added token but the stop token; Whisper: its
    ``suppress_tokens`` and the timestamp ids too)."""

    def score(
        self,
        batch: dict[str, Any],
        targets: Sequence[Sequence[int]],
        top_k: int,
        block_control: bool = False,
        tau: float | None = None,
        encoder_out: torch.Tensor | None = None,
    ) -> TeacherScores:
        """Teacher-forced scores; ``block_control`` masks ``control_ids`` out before the top-k and log-softmax;
        ``tau`` also returns the tempered log-partition (``TeacherScores.log_z_tau``); ``encoder_out``: states from
        :meth:`encode` of the same audio (``reusable_encoder`` teachers)."""
