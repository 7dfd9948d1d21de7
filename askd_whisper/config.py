"""ASKD-Whisper experiment schema (arXiv 2601.19919). Paper-faithful defaults; alternatives are ablations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from common.data.datamodule import DataConfig
from common.evaluate import DecodeConfig
from common.teachers import TeacherConfig
from common.training import OptimConfig, TrainerConfig


@dataclass
class StudentConfig:
    """The compact student built from the teacher."""

    n_decoder_layers: int = 2
    """Decoder layers kept (maximally spaced, first and last included)."""
    freeze_encoder: bool = True
    """Keep the copied encoder frozen (then one encoder pass feeds teacher and student)."""

    def __post_init__(self) -> None:
        if self.n_decoder_layers < 1:
            raise ValueError("n_decoder_layers must be >= 1")


@dataclass
class CurriculumConfig:
    """Phase A: (1 - lambda) CE + lambda tau^2 KL(teacher || student), lambda decaying with progress."""

    schedule: Literal["constant", "linear", "cosine", "exponential", "step"] = "cosine"
    """How lambda decays over phase A."""
    lambda_0: float = 0.9
    """Initial teacher weight."""
    lambda_min: float = 0.0
    """Final / floor teacher weight."""
    gamma: float = 0.5
    """Decay factor: per 1 / exp_decays of phase A (exponential), per milestone (step)."""
    exp_decays: float = 5.0
    """Exponential schedule: how many factors of gamma phase A spans (its shape; it ends at lambda_min)."""
    milestones: list[float] = field(default_factory=lambda: [0.5])
    """Fractions of phase A (in (0, 1], increasing) at which the step schedule multiplies lambda by gamma; it
    reaches lambda_min at the last one."""
    adaptive: Literal["none", "gating", "confidence"] = "none"
    """Per-token teacher weighting on top of lambda."""
    ce_weight: Optional[float] = None
    """None: CE weight is 1 - lambda; a number: constant CE weight (Distil-Whisper: 0.8)."""
    tau: float = 2.0
    """Distillation temperature."""

    def __post_init__(self) -> None:
        if not 0 <= self.lambda_min <= self.lambda_0 <= 1 and self.ce_weight is None:
            raise ValueError("need 0 <= lambda_min <= lambda_0 <= 1")
        if self.tau <= 0:
            raise ValueError("tau must be > 0")
        if not 0 < self.gamma < 1:
            raise ValueError(f"curriculum.gamma must be in (0, 1), got {self.gamma}")
        if self.exp_decays <= 0:
            raise ValueError(f"curriculum.exp_decays must be > 0, got {self.exp_decays}")
        m = list(self.milestones)
        if not m or any(not 0 < x <= 1 for x in m) or m != sorted(set(m)):
            raise ValueError(f"curriculum.milestones must be increasing fractions in (0, 1], got {m}")
        if self.ce_weight is not None and self.ce_weight < 0:
            raise ValueError(f"curriculum.ce_weight must be >= 0, got {self.ce_weight}")


@dataclass
class SelfKDConfig:
    """Phase B: (1 - beta) CE + beta tau^2 KL(self-teacher || student)."""

    enabled: bool = True
    """Run phase B after the boundary."""
    boundary: float = 0.7
    """Phase boundary as a fraction of trainer.max_steps."""
    self_teacher: Literal["snapshot", "ema", "prev_epoch"] = "snapshot"
    """Frozen student snapshot at the boundary, an EMA of the student, or the previous epoch's student."""
    ema_decay: float = 0.999
    """EMA decay (self_teacher=ema)."""
    beta_schedule: Literal["constant", "linear"] = "constant"
    """Beta over phase B."""
    beta_0: float = 0.5
    """Initial (or constant) self-KD weight."""
    beta_max: float = 0.8
    """Final beta of the linear schedule."""
    tau: float = 2.0
    """Self-distillation temperature."""

    def __post_init__(self) -> None:
        if not 0 < self.boundary <= 1:
            raise ValueError("boundary must be in (0, 1]")
        if not 0 <= self.beta_0 <= 1 or not 0 <= self.beta_max <= 1:
            raise ValueError(f"self_kd.beta_0 and beta_max must be in [0, 1], got {self.beta_0}, {self.beta_max}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"self_kd.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.tau <= 0:
            raise ValueError("self_kd.tau must be > 0")


@dataclass
class AskdConfig:
    """One ASKD-Whisper (or baseline) training run."""

    run_dir: str
    """Run directory."""
    method: Literal["askd_whisper"] = "askd_whisper"
    """Selects this schema in `asr-distill fit`."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The frozen Whisper teacher (also the source of the student's weights)."""
    student: StudentConfig = field(default_factory=StudentConfig)
    """Student construction."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training/dev/test manifests and batching."""
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """Phase A."""
    self_kd: SelfKDConfig = field(default_factory=SelfKDConfig)
    """Phase B."""
    teacher_source: Literal["online", "cache", "none"] = "online"
    """Teacher distributions: computed online, read from a teacher cache (top-k), or none (CE only)."""
    encoder_cache_mb: float = 0.0
    """Keep the shared frozen encoder's states of each training utterance in memory (by id, up to this many MB) and
    reuse them in later epochs: exact (the encoder is frozen and sees only the audio), and a Whisper encoder's 30 s
    pass is most of a step on a small corpus. Needs student.freeze_encoder. 0: off."""
    teacher_cache: Optional[str] = None
    """Teacher cache directory (teacher_source=cache, or labels=pseudo)."""
    labels: Literal["reference", "pseudo"] = "reference"
    """Train on the references or on the teacher's transcripts from the cache."""
    pseudo_label_max_wer: Optional[float] = 0.1
    """Drop utterances whose teacher transcript has a normalised WER above this (Distil-Whisper: 10 %)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=50, schedule="cosine"))
    """Optimizer."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Trainer."""
    decoding: DecodeConfig = field(default_factory=DecodeConfig)
    """Decoding for validation and the final test evaluation."""

    def __post_init__(self) -> None:
        if self.teacher.kind != "whisper":
            raise ValueError("teacher.kind: ASKD-Whisper distils a Whisper teacher")
        if self.teacher_source == "cache" and self.labels == "pseudo":
            raise ValueError("teacher_source=cache scores the references; with labels=pseudo use teacher_source=online")
        if self.encoder_cache_mb < 0 or (self.encoder_cache_mb and not self.student.freeze_encoder):
            raise ValueError(
                "encoder_cache_mb: >= 0, and only with student.freeze_encoder (a training encoder changes)"
            )
        if self.data.train_audio_only and self.labels != "pseudo":
            raise ValueError("data.train_audio_only: audio-only training needs labels=pseudo (teacher transcripts)")
        if self.data.train_audio_only and self.pseudo_label_max_wer is not None:
            raise ValueError(
                "pseudo_label_max_wer: audio-only training data has no references to filter teacher transcripts by"
            )
        if (self.teacher_source == "cache" or self.labels == "pseudo") and not self.teacher_cache:
            raise ValueError(
                "teacher_cache: a teacher cache directory is needed for teacher_source=cache or labels=pseudo"
            )
