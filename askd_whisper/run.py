"""``asr-distill fit`` for ASKD-Whisper, the final test evaluation, and ``asr-distill export``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from askd_whisper.config import AskdConfig
from askd_whisper.module import AskdModule
from common.data.collate import WhisperCollator
from common.data.datamodule import AudioDataModule
from common.evaluate import WhisperTranscriber
from common.io import publish
from common.teachers.protocol import Teacher
from common.training import launch_rank, run_fit
from common.training.preemption import load_checkpoint


def build(cfg: AskdConfig, teacher: Optional[Teacher] = None) -> tuple[AskdModule, AudioDataModule, dict]:
    from common.teachers import build_teacher
    from common.teachers.cache import open_for_training

    if cfg.teacher.kind != "whisper":
        raise ValueError(f"teacher.kind: ASKD-Whisper distils a Whisper teacher, got {cfg.teacher.kind!r}")
    teacher = teacher or build_teacher(cfg.teacher)
    student = None
    if next(teacher.model.parameters()).dtype != torch.float32:  # copy fp32 weights, not the teacher's rounded ones
        from askd_whisper.student import build_student
        from common.whisper import load_whisper

        src, _ = load_whisper(cfg.teacher.name_or_path, dtype=torch.float32)
        student = build_student(src, cfg.student.n_decoder_layers, cfg.student.freeze_encoder)
        del src
    collate = WhisperCollator(teacher.processor, feature_cache_mb=cfg.encoder_cache_mb)  # features kept with states
    dm = AudioDataModule(cfg.data, collate, collate)  # dev batches: labels too
    dm.setup("fit")
    info: dict[str, Any] = {}
    cache = None
    if cfg.teacher_cache:  # before any step: the cache must be this teacher's, on these manifests, at this tau
        cache, info = open_for_training(
            dm,
            cfg.teacher_cache,
            teacher,
            cfg.data.train,
            cfg.data.bad_sample_policy,
            tau=cfg.curriculum.tau if cfg.teacher_source == "cache" else None,
            relabel=cfg.labels == "pseudo",
            max_error_rate=cfg.pseudo_label_max_wer,
        )
    module = AskdModule(
        cfg,
        teacher,
        student=student,
        cache=cache if cfg.teacher_source == "cache" else None,
        dev_names=tuple(dm.dev_names),
    )
    return module, dm, info


def fit(
    cfg: AskdConfig,
    resume: bool = False,
    overwrite: bool = False,
    teacher: Optional[Teacher] = None,
    stop_after_steps: Optional[int] = None,
    callbacks: Optional[list] = None,
) -> dict:
    """Train, evaluate the test sets with the final student, write ``summary.json`` last (common.training.run_fit)."""
    if teacher is None:  # before the run directory exists: a fixed rerun needs no --overwrite
        from common.teachers import check_teacher

        check_teacher(cfg.teacher)

    def build_all():
        module, dm, info = build(cfg, teacher)
        if launch_rank() == 0:
            module.processor.save_pretrained(Path(cfg.run_dir) / "processor")
            module.student.generation_config.save_pretrained(Path(cfg.run_dir) / "processor")
        info["n_params_student"] = sum(p.numel() for p in module.student.parameters())
        return module, dm, info

    return run_fit(
        cfg,
        build_all,
        lambda m: WhisperTranscriber(m.student, m.processor, name="student"),
        resume=resume,
        overwrite=overwrite,
        stop_after_steps=stop_after_steps,
        callbacks=callbacks,
    )


def export(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face directory (weights, config, processor, generation config) from a checkpoint."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    ckpt_path = Path(ckpt_path)
    ck = load_checkpoint(ckpt_path)  # weights_only: a pickle payload is refused, never run
    if "askd" not in ck:
        raise ValueError(f"{ckpt_path} is not an ASKD-Whisper checkpoint")
    cfg = WhisperConfig.from_dict(ck["askd"]["student_config"])
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(cfg)
    sd = {k[len("student.") :]: v for k, v in ck["state_dict"].items() if k.startswith("student.")}
    model.load_state_dict(sd, strict=False, assign=True)
    model.tie_weights()
    run_dir = ckpt_path.parent.parent
    proc = WhisperProcessor.from_pretrained(run_dir / "processor")
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig.from_pretrained(run_dir / "processor")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    return publish(out)
