"""``asr-distill fit`` for an Ark-ASR stage (sft | td | opd); the trained student is saved to RUN_DIR/student/,
which the next stage names as ``model.init_from``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ark_asr.config import ArkConfig
from ark_asr.model import ArkTranscriber, build_student, check_model_dir
from ark_asr.module import ArkCollator, ArkModule
from common.data.datamodule import AudioDataModule
from common.teachers.protocol import Teacher
from common.training import run_fit


def build(cfg: ArkConfig, teacher: Optional[Teacher] = None) -> tuple[ArkModule, AudioDataModule, dict[str, Any]]:
    from common.teachers import build_teacher
    from common.teachers.cache import open_for_training
    from common.teachers.token_map import TokenMap

    student = build_student(cfg.model)
    collate = ArkCollator(student)
    dm = AudioDataModule(cfg.data, collate, collate)
    dm.setup("fit")
    info: dict[str, Any] = {}
    if cfg.stage == "td" and cfg.td_source == "self":  # self-training: the student's own transcripts, no teacher
        dm.train_cuts, info["self_labels"] = relabel_with_own_transcripts(student, dm.train_cuts, cfg)
    elif cfg.stage == "td":  # CE on teacher transcripts; no teacher is loaded: the cache is checked on its manifests
        _, info = open_for_training(
            dm,
            cfg.teacher_cache,
            None,
            cfg.data.train,
            cfg.data.bad_sample_policy,
            relabel=True,
            max_error_rate=cfg.td_max_wer,
        )
    token_map = None
    if cfg.stage == "opd":
        teacher = teacher or build_teacher(cfg.teacher)
        token_map = TokenMap(teacher.tokenizer, student.tokenizer, extra={teacher.stop_id: student.stop_id})
        info["token_map_teacher_coverage"] = round(token_map.teacher_coverage, 4)
    return ArkModule(cfg, student, teacher, token_map, dev_names=tuple(dm.dev_names)), dm, info


def relabel_with_own_transcripts(student, cuts, cfg: ArkConfig):
    """Each training cut's transcript replaced by the starting student's greedy transcript of its audio (the
    self-training control; decoded once, before training, with ``opd.max_new_tokens`` as OPD's rollouts are). Empty
    transcripts are dropped and counted. Returns ``(cuts, {"kept", "dropped_empty"})``."""
    import torch

    from common.data.datamodule import eval_loader

    texts: dict[str, str] = {}
    student.eval()
    with torch.no_grad():
        for batch in eval_loader(cuts, ArkCollator(student), cfg.decoding.batch_seconds, cfg.data.bad_sample_policy):
            if not batch["ids"]:
                continue
            out = student.generate(batch["input_features"], batch["feature_lens"], cfg.opd.max_new_tokens)
            texts.update({u: student.decode(ids) for u, ids in zip(batch["ids"], out["ids"])})
    student.train()

    def relabel(c):
        c.supervisions[0].text = texts[c.id]
        return c

    out = cuts.filter(lambda c: texts.get(c.id, "").strip() != "").map(relabel).to_eager()
    if len(out) < 2:
        raise ValueError("td_source=self: the starting student transcribed fewer than 2 training utterances")
    return out, {"kept": len(out), "dropped_empty": len(cuts) - len(out)}


def fit(
    cfg: ArkConfig,
    resume: bool = False,
    overwrite: bool = False,
    teacher: Optional[Teacher] = None,
    stop_after_steps: Optional[int] = None,
    callbacks: Optional[list] = None,
) -> dict[str, Any]:
    if cfg.model.init_from:  # before the run directory exists: a fixed rerun needs no --overwrite
        check_model_dir(cfg.model.init_from)
    else:  # the encoder and LM checkpoints, as --model is checked (bundled:, preset: and hub ids pass)
        from common.evaluate import check_model_reference

        for key, ref in (("model.encoder", cfg.model.encoder), ("model.llm", cfg.model.llm)):
            if ref != "config" and not ref.startswith("preset:"):
                try:
                    check_model_reference(ref)
                except ValueError as err:
                    raise ValueError(f"{key}: {err}") from None
    if cfg.stage == "opd" and teacher is None:
        from common.teachers import check_teacher

        check_teacher(cfg.teacher)
    return run_fit(
        cfg,
        lambda: build(cfg, teacher),
        lambda m: ArkTranscriber(m.student, name=f"ark-{cfg.stage}"),
        resume=resume,
        overwrite=overwrite,
        stop_after_steps=stop_after_steps,
        callbacks=callbacks,
        on_trained=lambda m, run_dir: m.student.save_pretrained(Path(run_dir) / "student"),
    )
