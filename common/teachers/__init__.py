"""Frozen teachers behind one interface (:class:`~common.teachers.protocol.Teacher`), built from config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from common.teachers.protocol import Generation, Teacher
from common.teachers.scoring import TeacherScores

__all__ = ["TeacherConfig", "build_teacher", "Teacher", "TeacherScores", "Generation"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class TeacherConfig:
    """Which frozen teacher, where it runs."""

    kind: Literal["whisper", "qwen3_asr"] = "whisper"
    """whisper: any HF Whisper; qwen3_asr: transformers' Qwen3ASRForConditionalGeneration."""
    name_or_path: str = "bundled:tiny.en"
    """bundled:tiny.en (whisper only), a local HF directory, or a hub id."""
    device: str = "cpu"
    """Device of the teacher (it can differ from the student's); "auto": the training process's own device
    (each rank's GPU under DDP/FSDP), set when training starts."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Teacher weights and compute dtype."""
    placement: Literal["replicated", "sharded"] = "replicated"
    """Multi-process training: a full copy per rank, or every transformer layer sharded across ranks (FSDP2
    ``fully_shard``; a layer's weights are gathered just for its forward, embeddings and head stay replicated)."""

    def __post_init__(self) -> None:
        if self.kind == "qwen3_asr" and self.name_or_path.startswith("bundled:"):
            raise ValueError("teacher.name_or_path: bundled models are Whisper; qwen3_asr needs a Qwen3-ASR checkpoint")


def check_teacher(cfg: TeacherConfig) -> None:
    """A start-up check of ``teacher.name_or_path`` (before any run directory exists), as ``--model``'s: a local
    directory that is missing or holds no model is one line naming the key."""
    from common.evaluate import check_model_reference

    try:
        check_model_reference(cfg.name_or_path)
    except ValueError as err:
        raise ValueError(f"teacher.name_or_path: {err}") from None


def build_teacher(cfg: TeacherConfig) -> Teacher:
    """The frozen teacher named by ``cfg`` (eval mode, no grad); a model that cannot load (no network, no such repo,
    missing weight files) is one line naming it."""
    check_teacher(cfg)
    try:
        return _build_teacher(cfg)
    except OSError as err:  # Hugging Face's loaders
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"teacher.name_or_path: cannot load {cfg.name_or_path}: {first}") from None


def _build_teacher(cfg: TeacherConfig) -> Teacher:
    if cfg.kind == "whisper":
        from common.teachers.whisper_teacher import WhisperTeacher

        return WhisperTeacher.from_pretrained(cfg.name_or_path, _load_device(cfg), _DTYPES[cfg.dtype])
    from common.teachers.qwen3_asr import Qwen3ASRTeacher

    return Qwen3ASRTeacher.from_pretrained(cfg.name_or_path, _load_device(cfg), _DTYPES[cfg.dtype])


def _load_device(cfg: TeacherConfig) -> str:
    """auto: the GPU in a single process; CPU first under a multi-process launch (each rank's trainer then moves it to
    that rank's device), so that no two ranks ever load a teacher onto the same GPU."""
    if cfg.device != "auto":
        return cfg.device

    multi = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")) or 1) > 1
    return "cuda" if torch.cuda.is_available() and not multi else "cpu"
