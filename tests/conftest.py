"""Shared fixtures. Tests are offline and CPU-only; real speech is read in place from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest

from common.paths import shared_real_speech
from common.training.allocator import keep_large_blocks

REPO = Path(__file__).resolve().parents[1]
REAL_SPEECH = shared_real_speech()  # the same lookup as make demo's real_en column

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
keep_large_blocks()  # as asr-distill does at start: large CPU tensors kept in glibc's heap (test_allocator.py)


@pytest.fixture(autouse=True)
def _fresh_encoder_stores():
    """Each test starts with no shared encoder states (common.teachers.encoder_cache.shared_cache is process-wide)."""
    from common.teachers.encoder_cache import clear_shared

    clear_shared()
    yield
    clear_shared()


@pytest.fixture(scope="session")
def real_speech() -> Path:
    if not (REAL_SPEECH / "manifest.jsonl").is_file():
        pytest.skip(f"real speech clips not found at {REAL_SPEECH} (the ../shared folder beside the repo)")
    return REAL_SPEECH


@pytest.fixture(scope="session")
def english_manifest(real_speech: Path, tmp_path_factory) -> Path:
    """The 40 English clips as a manifest with absolute paths (folder name 'real_en')."""
    from common.data.manifests import write_jsonl_subset

    out = tmp_path_factory.mktemp("real") / "real_en" / "manifest.jsonl"
    write_jsonl_subset(real_speech / "manifest.jsonl", out, language="en")
    return out


@pytest.fixture(scope="session")
def whisper_tiny():
    """The bundled real Whisper tiny.en (converted once into the cache)."""
    from common.whisper import load_whisper

    return load_whisper("bundled:tiny.en")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A small synthetic English + Mandarin corpus (seeded, a few seconds to make)."""
    from common.data.synth import SynthConfig, synthesize_corpus

    out = tmp_path_factory.mktemp("synth")
    return synthesize_corpus(SynthConfig(out_dir=str(out), en_sizes=[48, 8, 8], zh_sizes=[16, 4, 4]), progress=False)


@pytest.fixture(scope="session")
def teacher(whisper_tiny):
    """The bundled tiny.en as a frozen WhisperTeacher (shared: it is never trained or moved)."""
    from common.teachers.whisper_teacher import WhisperTeacher

    return WhisperTeacher(*whisper_tiny)


# -- config builders shared by the test files (``from conftest import ark_cfg``) -------------------------------------
TINY_LLM = dict(
    model_type="qwen3",
    hidden_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=128,
    head_dim=32,
    tie_word_embeddings=True,
    max_position_embeddings=1024,
)


TINY_ARK_MODEL = {
    "encoder": "bundled:tiny.en",
    "encoder_positions": "absolute",
    "llm": "config",
    "llm_config": TINY_LLM,
    "tokenizer": "whisper",
    "transcript_prefix": " ",
}
"""The model section of the tiny Ark configs (the real tiny.en encoder with its position table, a tiny Qwen3 LM)."""


def ark_model_cfg(**kw):
    """A tiny Ark student: the real tiny.en encoder (frozen, its position table) + a 1-layer random Qwen3 LM."""
    from ark_asr.config import ArkModelConfig

    return ArkModelConfig(**{**TINY_ARK_MODEL, "freeze_encoder": True, **kw})


def ark_cfg(tiny_corpus, run_dir, stage, **kw):
    """A tiny Ark-ASR experiment (3 steps) on the tiny corpus; ``kw`` sections are merged into the defaults."""
    from ark_asr.config import ArkConfig
    from common.config import from_dict

    base = {
        "run_dir": str(run_dir),
        "stage": stage,
        "model": {**TINY_ARK_MODEL, "freeze_encoder": True},
        "teacher": {"kind": "whisper", "name_or_path": "bundled:tiny.en"},
        "opd": {"top_k": 8, "max_new_tokens": 12},
        "data": {
            "train": [str(tiny_corpus / "en_train" / "manifest.jsonl")],
            "test": [str(tiny_corpus / "en_test" / "manifest.jsonl")],
            "batch_seconds": 12.0,
            "num_buckets": 2,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "trainer": {"max_steps": 3, "log_every_n_steps": 1, "progress_bar": False},
        "decoding": {"max_new_tokens": 12},
    }
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return from_dict(ArkConfig, base)


def askd_cfg(tiny_corpus, run_dir, **over):
    """A tiny ASKD-Whisper experiment (1 decoder layer, 6 steps, EMA self-KD from half-way); ``over`` is merged."""
    from askd_whisper.config import AskdConfig
    from common.config import from_dict

    base = {
        "run_dir": str(run_dir),
        "student": {"n_decoder_layers": 1},
        "data": {
            "train": [str(tiny_corpus / "en_train" / "manifest.jsonl")],
            "batch_seconds": 12.0,
            "num_buckets": 2,
            "shuffle": True,
            "seed": 0,
        },
        "trainer": {"max_steps": 6, "log_every_n_steps": 1, "progress_bar": False, "seed": 0},
        "self_kd": {"enabled": True, "boundary": 0.5, "self_teacher": "ema", "ema_decay": 0.9},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "decoding": {"max_new_tokens": 20},
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return from_dict(AskdConfig, base)


def sft_cfg(tiny_corpus, run_dir, **trainer):
    """A tiny Ark SFT run (6 steps, seed 0) without test sets; ``trainer`` keys are merged."""
    from ark_asr.config import ArkConfig
    from common.config import from_dict

    return from_dict(
        ArkConfig,
        {
            "run_dir": str(run_dir),
            "stage": "sft",
            "model": dict(TINY_ARK_MODEL),
            "data": {
                "train": [str(tiny_corpus / "en_train" / "manifest.jsonl")],
                "batch_seconds": 8.0,
                "num_buckets": 2,
            },
            "optim": {"lr": 1e-3},
            "trainer": {"max_steps": 6, "log_every_n_steps": 1, "progress_bar": False, "seed": 0, **trainer},
        },
    )


class SignalAt(L.Callback):
    """Send this process a real signal after optimizer step ``step`` (as a scheduler or `kill` would)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
