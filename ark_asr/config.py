"""Ark-ASR experiment schema (arXiv 2605.28139). Paper-faithful defaults; alternatives are ablations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from common.data.datamodule import DataConfig
from common.evaluate import DecodeConfig
from common.teachers import TeacherConfig
from common.training import OptimConfig, TrainerConfig


@dataclass
class ArkModelConfig:
    """Whisper-style encoder -> LayerNorm -> frame merge -> MLP adapter -> causal LM."""

    encoder: str = "openai/whisper-large-v3"
    """Whisper checkpoint whose encoder initialises ours (bundled:tiny.en, a local dir or a hub id)."""
    encoder_init: Literal["pretrained", "random"] = "pretrained"
    """Load the encoder's weights, or only its architecture (tests, meta-device counts)."""
    encoder_positions: Literal["rope_released", "absolute", "rope_full"] = "rope_released"
    """Positions in the encoder's self-attention. rope_released: the released ARK-ASR checkpoints' rotary scheme
    (``use_rope: true``; GLM style: the first half of each head's dimensions rotated in interleaved pairs, base 10000)
    and no absolute table; absolute: Whisper's own learned table (limited to its 1500 frames = 30 s; keep it for a
    frozen pretrained Whisper encoder, which was trained with it); rope_full (ablation): rotary on the whole head
    dimension, half-split pairs (Su et al. 2021 / Llama style)."""
    max_audio_seconds: float = 40.0
    """Longest audio the student accepts with rotary positions (the authors evaluate up to 40 s); absolute positions
    stay at the encoder's table (30 s for Whisper)."""
    drop_final_layernorm: bool = True
    """Drop the Whisper encoder's final LayerNorm (the authors do)."""
    merge: int = 4
    """Frames merged into one audio token (50 -> 12.5 tokens/s)."""
    llm: str = "Qwen/Qwen2.5-0.5B"
    """Causal LM checkpoint (local dir or hub id; any architecture transformers' Auto classes load), 'config' to build
    it from llm_config, or 'preset:NAME' (qwen2-0.5b, qwen3-0.6b: architectures for meta-device counts). The paper and
    the released ARK-ASR checkpoints use a Qwen2 LM (q/k/v biases, no q/k-norm); Qwen3 is an ablation."""
    llm_config: dict[str, Any] = field(default_factory=dict)
    """Config fields of the LM when llm='config', with ``model_type`` naming its architecture (qwen2, qwen3, ...);
    vocab_size is raised to the tokenizer's size."""
    tokenizer: Literal["llm", "whisper", "qwen3"] = "llm"
    """Text tokenizer: the LLM checkpoint's, the encoder's Whisper tokenizer, or the offline Qwen3 tokenizer."""
    transcript_prefix: str = ""
    """Text put before a transcript when tokenised (' ' matches Whisper's space-prefixed tokens)."""
    instruction: str = "Please transcribe this audio."
    """The user-turn instruction after the audio."""
    freeze_encoder: bool = False
    """Keep the audio encoder frozen."""
    freeze_adapter: bool = False
    """Keep the adapter (and its LayerNorm) frozen."""
    lora_rank: int = 0
    """LoRA rank on the LLM's attention and MLP projections (0: full fine-tuning)."""
    lora_alpha: int = 32
    """LoRA alpha."""
    init_from: Optional[str] = None
    """A model directory to start from: a saved student (or a run directory's 'student/', the previous stage) or a
    released ARK-ASR checkpoint directory (``config.json`` with ``model_type: arkasr``, e.g. ARK-ASR-0.6B). The
    architecture, tokenizer and front end then come from that directory; the fields above only set freezing/LoRA."""

    def __post_init__(self) -> None:
        if self.merge < 1:
            raise ValueError("merge must be >= 1")
        if self.llm == "config" and not self.llm_config:
            raise ValueError("llm_config: needed when llm='config'")
        if self.llm == "config" and "model_type" not in self.llm_config:
            raise ValueError("llm_config.model_type: name the LM architecture (qwen2 as the paper, qwen3, ...)")
        if not self.max_audio_seconds > 0:
            raise ValueError("max_audio_seconds must be > 0")


@dataclass
class OPDConfig:
    """On-policy distillation (arXiv 2605.28139, OPD)."""

    top_k: int = 32
    """k for the student's S_t and the teacher's K_t."""
    tau: float = 1.0
    """Temperature of the KL."""
    support: Literal["union", "teacher", "student"] = "union"
    """Candidate set: S ∪ K, K or S."""
    direction: Literal["forward", "reverse", "jsd"] = "forward"
    """KL direction (forward = KL(teacher || student))."""
    jsd_beta: float = 0.5
    """Mixture weight of the JSD."""
    teacher_values: Literal["logprob", "raw_logit_topk"] = "logprob"
    """Teacher log-probs on all of U (the paper's formula), or raw_logit_topk: the released code's behaviour, raw
    logits on K and log-probs on S \\ K (their scales differ by the log-partition)."""
    student_stop: Literal["keep", "generated_only"] = "keep"
    """The stop token in the student's S_t. keep (the paper's formula; the paper configs): S_t is the student's top-k
    after control-token blocking, so the student's own wish to stop early is a candidate that the teacher's value
    corrects. generated_only (the released trainer): the stop token is removed from S_t except at the position
    where the student generated it (it can still enter U_t through the teacher's K_t)."""
    rollout: Literal["greedy", "sample"] = "greedy"
    """How the student rolls out."""
    temperature: float = 1.0
    """Sampling temperature (rollout=sample)."""
    max_new_tokens: int = 64
    """Rollout length limit."""
    teacher_encoder_cache_mb: float = 0.0
    """Keep the frozen teacher's encoder states of each training utterance (by id) in memory, up to this many MB, and
    reuse them in later epochs: a Whisper teacher encodes 30 s of padded audio per utterance, most of an OPD step's
    cost on a small corpus. Exact (the teacher is frozen and its encoder sees only the audio). 0: off. Needs a teacher
    with ``encode`` (Whisper)."""
    dump_every: int = 50
    """Every this many steps (and at step 1), rank 0 writes the batch's per-position diagnostics - |U_t|, |S_t ∩ K_t|,
    teacher mass on S ∩ K, per-token KL, tokens - to RUN/diagnostics/opd_stepNNNNNNN.npz (0: never)."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.tau <= 0 or self.max_new_tokens < 1:
            raise ValueError("need top_k >= 1, tau > 0, max_new_tokens >= 1")
        if self.teacher_encoder_cache_mb < 0:
            raise ValueError("opd.teacher_encoder_cache_mb must be >= 0")


@dataclass
class ArkConfig:
    """One Ark-ASR stage: sft, td or opd."""

    run_dir: str
    """Run directory."""
    stage: Literal["sft", "td", "opd"]
    """sft: CE on references; td: CE on teacher transcripts (teacher cache); opd: on-policy distillation."""
    method: Literal["ark_asr"] = "ark_asr"
    """Selects this schema in `asr-distill fit`."""
    model: ArkModelConfig = field(default_factory=ArkModelConfig)
    """The student."""
    teacher: TeacherConfig = field(
        default_factory=lambda: TeacherConfig(kind="qwen3_asr", name_or_path="Qwen/Qwen3-ASR-1.7B-hf")
    )
    """The frozen teacher (opd)."""
    teacher_cache: Optional[str] = None
    """Teacher cache with transcripts (td with td_source=teacher_cache)."""
    td_source: Literal["teacher_cache", "self"] = "teacher_cache"
    """Where stage td's transcripts come from: teacher_cache (TD, the paper's teacher-data adaptation), or self: the
    starting student's own greedy transcripts of the training audio (self-training, no teacher): the control that
    separates "OPD toward a teacher" from "more training on new audio" (same audio, steps, lr and batch as OPD)."""
    td_max_wer: Optional[float] = None
    """td: keep only teacher transcripts with normalised WER <= this (None: keep all)."""
    opd: OPDConfig = field(default_factory=OPDConfig)
    """OPD options."""
    data: DataConfig = field(default_factory=lambda: DataConfig(max_duration=30.0))
    """Manifests and batching."""
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=1e-4, betas=(0.9, 0.95), weight_decay=0.005, warmup_steps=1000, schedule="cosine"
        )
    )
    """Optimizer (released launcher defaults)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Trainer."""
    decoding: DecodeConfig = field(default_factory=lambda: DecodeConfig(max_new_tokens=256))
    """Validation / test decoding (greedy)."""

    def __post_init__(self) -> None:
        if self.decoding.encoder_cache_mb:
            raise ValueError(
                "decoding.encoder_cache_mb: an Ark student's encoder states depend on the batch's padding (no encoder "
                "mask), so they are not reused per clip; set it for Whisper models only"
            )
        if self.stage == "td" and self.td_source == "teacher_cache" and not self.teacher_cache:
            raise ValueError("teacher_cache: stage td trains on teacher transcripts from a teacher cache")
        if self.td_source == "self" and not self.model.init_from:
            raise ValueError("td_source=self: self-training needs a trained student to transcribe (model.init_from)")
        if self.data.train_audio_only and self.stage == "sft":
            raise ValueError("data.train_audio_only: stage sft trains on references; audio-only data is for td and opd")
        if self.td_source == "self" and self.td_max_wer is not None:
            raise ValueError("td_max_wer: filters teacher transcripts; td_source=self has none")
        if self.data.train_audio_only and self.stage == "td" and self.td_max_wer is not None:
            raise ValueError("td_max_wer: audio-only training data has no references to filter teacher transcripts by")
