"""``asr-distill fit`` for ASKD-Whisper, the final test evaluation, and ``asr-distill export``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from askd_whisper.config import AskdConfig
from askd_whisper.module import AskdModule
from common.config import save_yaml
from common.data.collate import WhisperCollator
from common.data.datamodule import AudioDataModule
from common.evaluate import EvalConfig, WhisperTranscriber, markdown_table, run_evaluation
from common.io import SUMMARY, atomic_write_json, git_revision, is_complete, prepare_run_dir
from common.teachers.whisper_teacher import WhisperTeacher
from common.train import StopAfterSteps, build_trainer, last_checkpoint


def _apply_pseudo_labels(dm: AudioDataModule, cfg: AskdConfig, cache) -> dict[str, int]:
    """Replace training references by teacher transcripts; drop utterances above the WER filter."""
    labels = cache.pseudo_labels(cfg.pseudo_label_max_wer)
    before = len(dm.train_cuts)

    def relabel(c):
        c.supervisions[0].text = labels[c.id]
        return c

    dm.train_cuts = dm.train_cuts.filter(lambda c: c.id in labels and labels[c.id].strip()).map(relabel).to_eager()
    if len(dm.train_cuts) == 0:
        raise ValueError(f"no training utterance passes the pseudo-label filter (max WER {cfg.pseudo_label_max_wer})")
    return {"kept": len(dm.train_cuts), "dropped": before - len(dm.train_cuts)}


def build(cfg: AskdConfig, teacher: Optional[WhisperTeacher] = None) -> tuple[AskdModule, AudioDataModule, dict]:
    from common.teachers.cache import TeacherCache

    teacher = teacher or WhisperTeacher.from_pretrained(cfg.teacher.name_or_path, cfg.teacher.device,
                                                        torch.bfloat16 if cfg.teacher.dtype == "bfloat16" else torch.float32)
    dm = AudioDataModule(cfg.data, WhisperCollator(teacher.processor), WhisperCollator(teacher.processor, with_labels=False))
    dm.setup("fit")
    info: dict[str, Any] = {}
    cache = TeacherCache(cfg.teacher_cache) if cfg.teacher_cache else None
    if cfg.labels == "pseudo":
        info["pseudo_labels"] = _apply_pseudo_labels(dm, cfg, cache)
    module = AskdModule(cfg, teacher, cache=cache if cfg.teacher_source == "cache" else None, dev_names=tuple(dm.dev_names))
    return module, dm, info


def fit(cfg: AskdConfig, resume: bool = False, overwrite: bool = False, teacher: Optional[WhisperTeacher] = None,
        stop_after_steps: Optional[int] = None) -> dict:
    """Train, evaluate the test sets with the final student, write ``summary.json`` last.

    ``stop_after_steps`` stops early (a checkpoint is written, no summary): the run can be resumed with ``resume``.
    """
    run_dir = Path(cfg.run_dir)
    ckpt = last_checkpoint(run_dir) if resume else None
    if not resume:
        prepare_run_dir(run_dir, overwrite=overwrite)
    elif is_complete(run_dir):
        return json.loads((run_dir / SUMMARY).read_text())
    L.seed_everything(cfg.trainer.seed, workers=True)
    save_yaml(cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "meta.json", {"git_revision": git_revision(), "method": cfg.method, "torch": torch.__version__})
    module, dm, info = build(cfg, teacher)
    module.processor.save_pretrained(run_dir / "processor")
    module.student.generation_config.save_pretrained(run_dir / "processor")
    trainer = build_trainer(cfg.trainer, run_dir, callbacks=[StopAfterSteps(stop_after_steps)] if stop_after_steps else None)
    t0 = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    train_s = time.time() - t0
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    if trainer.global_step < cfg.trainer.max_steps:  # stopped early: resumable, not complete
        return {"method": cfg.method, "steps": trainer.global_step, "stopped_early": True}
    summary: dict[str, Any] = {"method": cfg.method, "steps": trainer.global_step, "train_seconds": round(train_s, 1),
                               "n_params_student": sum(p.numel() for p in module.student.parameters()), **info}
    if cfg.data.test:
        student = module.student.eval()
        ev = EvalConfig(out_dir=str(run_dir / "eval"), model=str(run_dir), sets=list(cfg.data.test), decoding=cfg.decoding,
                        bad_sample_policy=cfg.data.bad_sample_policy)
        res = run_evaluation(ev, overwrite=True, transcriber=WhisperTranscriber(student, module.processor, name="student"))
        summary["sets"] = res["sets"]
        summary["table"] = markdown_table(res, Path(cfg.run_dir).name)
    atomic_write_json(run_dir / SUMMARY, summary)
    return summary


def export(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face directory (weights, config, processor, generation config) from a checkpoint."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    ckpt_path = Path(ckpt_path)
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if "askd" not in ck:
        raise ValueError(f"{ckpt_path} is not an ASKD-Whisper checkpoint")
    cfg = WhisperConfig.from_dict(ck["askd"]["student_config"])
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(cfg)
    sd = {k[len("student."):]: v for k, v in ck["state_dict"].items() if k.startswith("student.")}
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
    return out
