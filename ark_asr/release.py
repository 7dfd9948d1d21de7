"""Released ARK-ASR checkpoints (ARK-ASR-0.6B / 3B, ``model_type: arkasr``) as Ark students, without remote code.

The release ships ``ArkasrForConditionalGeneration`` as remote code for an older transformers; its design is ours
(Whisper-style encoder with rotary positions -> LayerNorm -> 4-frame merge -> Linear(4 d, 2 d_llm) -> GELU ->
Linear(2 d_llm, d_llm) -> a Qwen2 causal LM), so this module reads the directory itself:

- ``config.json``: the LM's fields at the top level (``ArkasrConfig`` subclasses ``Qwen2Config``; a nested
  ``text_config`` with its own ``model_type`` is read too), ``whisper_config``, ``merge_factor``, ``use_rope``,
  ``adapter_type``, ``mlp_adapter_act``, ``audio_token_id``;
- the weights (``model.safetensors`` or a sharded ``model.safetensors.index.json``), tensor names mapped by prefix
  (:data:`NAME_MAP`); every tensor is mapped or refused, every parameter of the student is filled or refused;
- the checkpoint's own tokenizer: its ids of ``<|audio|>``, ``<|user|>``, ... are kept, nothing is appended;
- ``preprocessor_config.json`` (the Whisper feature extractor), or one built from ``whisper_config.num_mel_bins``.

Every problem is one :class:`ReleaseError` line naming the directory and what is wrong, raised before any work.
The student is assembled in :mod:`ark_asr.model` (:func:`~ark_asr.model.load_release`,
:func:`~ark_asr.model.check_release`); this module knows the release's files, not the student's classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# release prefix -> student prefix (first match wins); None: a tensor the release itself does not use
NAME_MAP: tuple[tuple[str, str | None], ...] = (
    ("audio_encoder.whisper.layer_norm.", None),  # the release replaces the encoder's final LayerNorm by Identity
    ("audio_encoder.whisper.", "encoder."),
    ("audio_encoder.layer_norm.", "norm."),
    ("audio_encoder.adapting.0.", "adapter.0."),
    ("audio_encoder.adapting.2.", "adapter.2."),
    ("model.", "llm.model."),
    ("lm_head.", "llm.lm_head."),
)
ARK_FIELDS = (
    "whisper_config",
    "adapter_type",
    "merge_factor",
    "spec_aug",
    "use_rope",
    "max_whisper_length",
    "mlp_adapter_act",
    "audio_token_id",
    "auto_map",
    "architectures",
    "model_type",
    "text_config",
)


class ReleaseError(ValueError):
    """A directory that is not a loadable ARK-ASR release (one line: the directory and the problem)."""


def is_release_dir(path: str | Path) -> bool:
    """A directory with a ``config.json`` and no ``ark_config.json`` (this project's own format)."""
    p = Path(path)
    return (p / "config.json").is_file() and not (p / "ark_config.json").is_file()


def read_release_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a release, checked: model_type arkasr, an MLP adapter with GELU, a whisper_config."""
    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ReleaseError(f"{p}: no config.json (not a model directory)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReleaseError(f"{cfg_file}: not valid JSON ({err})") from None
    if cfg.get("model_type") != "arkasr":
        raise ReleaseError(
            f"{cfg_file}: model_type {cfg.get('model_type')!r}, not 'arkasr' (a released ARK-ASR checkpoint) "
            "nor a student saved by this project (ark_config.json)"
        )
    if not isinstance(cfg.get("whisper_config"), dict):
        raise ReleaseError(f"{cfg_file}: no whisper_config (the audio encoder's architecture)")
    if cfg.get("adapter_type", "mlp") != "mlp" or cfg.get("mlp_adapter_act", "gelu") != "gelu":
        raise ReleaseError(
            f"{cfg_file}: adapter_type {cfg.get('adapter_type')!r} / mlp_adapter_act {cfg.get('mlp_adapter_act')!r}: "
            "only the released MLP adapter with GELU is supported"
        )
    return cfg


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The LM's config fields with their ``model_type``: a nested ``text_config``, else the top-level Qwen2 fields."""
    if isinstance(cfg.get("text_config"), dict):
        text = dict(cfg["text_config"])
        text.setdefault("model_type", "qwen2")
        return text
    text = {k: v for k, v in cfg.items() if k not in ARK_FIELDS and not k.startswith("_")}
    text["model_type"] = "qwen2"  # ArkasrConfig is a Qwen2Config; the vLLM model builds Qwen2ForCausalLM from it
    return text


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        raise ReleaseError(f"{path}: no model.safetensors (nor model.safetensors.index.json)")
    for f in files:
        if not f.is_file():
            raise ReleaseError(f"{path}: weight shard {f.name} named by the index is missing")
    return files


def release_weights(path: Path, shapes_only: bool = False) -> dict[str, Any]:
    """Every tensor of the checkpoint (``shapes_only``: name -> shape, read from the headers alone)."""
    from safetensors import SafetensorError, safe_open

    sd: dict[str, Any] = {}
    for f in _weight_files(path):
        try:
            with safe_open(str(f), framework="pt") as h:
                sd.update({k: tuple(h.get_slice(k).get_shape()) if shapes_only else h.get_tensor(k) for k in h.keys()})
        except (SafetensorError, OSError) as err:
            raise ReleaseError(f"{f}: cannot read the weights ({err})") from None
    return sd


def _unmapped_message(path: Path, unmapped: list[str]) -> str:
    return f"{path}: {len(unmapped)} tensor(s) with no place in the Ark student, e.g. {', '.join(sorted(unmapped)[:3])}"


def map_names(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Release tensor names -> student names. Returns (mapped, ignored names, unmapped names)."""
    mapped, ignored, unmapped = {}, [], []
    for name, t in sd.items():
        if "rotary_emb.inv_freq" in name:  # a buffer some exports carry; recomputed from the config
            ignored.append(name)
            continue
        for src, dst in NAME_MAP:
            if name.startswith(src):
                if dst is None:
                    ignored.append(name)
                else:
                    mapped[dst + name[len(src) :]] = t
                break
        else:
            unmapped.append(name)
    return mapped, ignored, unmapped


def release_tokenizer(path: Path, cfg: dict[str, Any], required: list[str], stop: str):
    """The checkpoint's own tokenizer, checked: every ``required`` prompt token present, ``audio_token_id`` equal to
    its ``<|audio|>``; nothing is appended (a missing pad token becomes the stop token, as the authors' inference)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it reads config.json and warns that 'arkasr' is no transformers model type
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReleaseError(f"{path}: cannot load the checkpoint's tokenizer ({first})") from None
    finally:
        hf_logging.set_verbosity(level)
    vocab = tok.get_vocab()
    missing = [t for t in required if t not in vocab]
    if missing:
        raise ReleaseError(f"{path}: the tokenizer lacks the Ark prompt tokens {', '.join(missing)}")
    audio_id = vocab["<|audio|>"]
    if "audio_token_id" in cfg and int(cfg["audio_token_id"]) != audio_id:
        raise ReleaseError(
            f"{path}: config.json audio_token_id {cfg['audio_token_id']} is not the tokenizer's <|audio|> id {audio_id}"
        )
    if tok.pad_token is None:  # the authors' inference pads with the stop token; no token is added
        tok.pad_token = tok.eos_token if tok.eos_token is not None else stop
    return tok


def release_feature_extractor(path: Path, n_mels: int):
    from transformers import WhisperFeatureExtractor

    if (path / "preprocessor_config.json").is_file():
        fe = WhisperFeatureExtractor.from_pretrained(str(path))
    else:
        fe = WhisperFeatureExtractor(feature_size=n_mels)
    if fe.feature_size != n_mels:
        raise ReleaseError(
            f"{path}: preprocessor_config.json has {fe.feature_size} mel bins, whisper_config {n_mels} (num_mel_bins)"
        )
    return fe


def check_tensors(path: Path, student, tensors: dict[str, Any]) -> dict[str, Any]:
    """Release tensors (name -> tensor or shape) against the student: every name mapped, every shape fitting,
    nothing missing (a tied LM head and, with rotary positions, the unused absolute table may be absent). Returns
    the mapped dict."""
    mapped, _ignored, unmapped = map_names(tensors)
    if unmapped:
        raise ReleaseError(_unmapped_message(path, unmapped))
    own = student.state_dict()
    for name, t in mapped.items():
        shape = tuple(t) if isinstance(t, tuple) else tuple(t.shape)
        if name not in own:
            raise ReleaseError(f"{path}: tensor {_release_name(name)} has no place in the architecture of config.json")
        if tuple(own[name].shape) != shape:
            raise ReleaseError(
                f"{path}: tensor {_release_name(name)} has shape {shape}; config.json's architecture needs "
                f"{tuple(own[name].shape)}"
            )
    optional = {"encoder.embed_positions.weight"} if student.encoder.rope else set()
    if student.llm.config.tie_word_embeddings:
        optional.add("llm.lm_head.weight")
    missing = sorted(set(own) - set(mapped) - optional)
    if missing:
        raise ReleaseError(
            f"{path}: {len(missing)} weight(s) missing from the checkpoint, e.g. "
            + ", ".join(_release_name(m) for m in missing[:3])
        )
    return mapped


def _release_name(student_name: str) -> str:
    """The release's name of a student tensor (for messages)."""
    for src, dst in NAME_MAP:
        if dst is not None and student_name.startswith(dst):
            return src + student_name[len(dst) :]
    return student_name
