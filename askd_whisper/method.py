"""ASKD-Whisper's entry in the method registry (``setup.cfg``: ``asr_distill.methods``). Its students export to
plain Hugging Face Whisper directories, which evaluation loads as any Whisper model (no transcriber of its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from askd_whisper.config import AskdConfig
from common.registry import Method


def _fit(cfg: AskdConfig, **kwargs: Any) -> dict:
    from askd_whisper.run import fit  # models and Lightning load only when a run starts (CLI start-up time)

    return fit(cfg, **kwargs)


def _export(ckpt: Path, out_dir: Path) -> Path:
    from askd_whisper.run import export

    return export(ckpt, out_dir)


def _build_student(teacher: Any, n_layers: int) -> Any:
    from askd_whisper.student import build_student

    return build_student(teacher, n_layers)


METHOD = Method(name="askd_whisper", config=AskdConfig, fit=_fit, export=_export, build_student=_build_student)
