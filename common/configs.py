"""Which schema a YAML under ``configs/`` fills, by its folder (used by the CLI and the config test)."""

from __future__ import annotations

from pathlib import Path


def schema_for(path: str | Path) -> type:
    parts = Path(path).resolve().parts
    if "configs" not in parts:
        raise ValueError(f"{path} is not under a configs/ folder")
    top = parts[parts.index("configs") + 1]
    name = Path(path).stem
    if top == "eval":
        from common.evaluate import EvalConfig

        return EvalConfig
    if top == "base" and name.startswith("synth"):
        from common.data.synth import SynthConfig

        return SynthConfig
    if top == "askd_whisper":
        from askd_whisper.config import AskdConfig

        return AskdConfig
    if top == "ark_asr":
        from ark_asr.config import ArkConfig

        return ArkConfig
    if top == "teachers":
        from common.teachers.cache import CacheConfig

        return CacheConfig
    raise ValueError(f"no schema is registered for {path} (folder {top!r})")
