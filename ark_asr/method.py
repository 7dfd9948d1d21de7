"""Ark-ASR's entry in the method registry (``setup.cfg``: ``asr_distill.methods``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ark_asr.config import ArkConfig
from common.registry import Method


def _fit(cfg: ArkConfig, **kwargs: Any) -> dict:
    from ark_asr.run import fit  # models and Lightning load only when a run starts (CLI start-up time)

    return fit(cfg, **kwargs)


def _is_release(model_dir: Path) -> bool:
    import json

    cfg = Path(model_dir) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "arkasr"
    except (ValueError, OSError, AttributeError):
        return False  # not JSON (or not an object): not ours; the Whisper/Qwen3-ASR loaders report it


def _load_transcriber(model_dir: Path, device: str, dtype: Any) -> Optional[Any]:
    """A saved Ark-ASR student (``RUN_DIR/student``, recognised by its ``ark_config.json``) or a released ARK-ASR
    checkpoint directory (``config.json`` with ``model_type: arkasr``)."""
    if not (Path(model_dir) / "ark_config.json").is_file() and not _is_release(Path(model_dir)):
        return None
    from ark_asr.model import ArkTranscriber

    return ArkTranscriber.from_dir(Path(model_dir), device=device, dtype=dtype)


METHOD = Method(name="ark_asr", config=ArkConfig, fit=_fit, load_transcriber=_load_transcriber)
