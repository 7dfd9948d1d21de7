"""Collators: (audios, texts, languages) -> model tensors, built from a model's processor.

They live beside the datamodule because several models share them; a new model brings its own.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch

from common.audio import TARGET_SR, as_numpy
from common.training.precision import without_autocast


def whisper_prefix(tokenizer, language: Optional[str] = None, task: str = "transcribe") -> list[int]:
    """The forced decoder prefix: <|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>.

    English-only checkpoints (no language tokens in use) get <|startoftranscript|><|notimestamps|>.
    """
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    no_ts = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    prefix = [sot]
    if language is not None and is_multilingual(tokenizer):
        prefix += [tokenizer.convert_tokens_to_ids(f"<|{language}|>"), tokenizer.convert_tokens_to_ids(f"<|{task}|>")]
    return prefix + [no_ts]


def is_multilingual(tokenizer) -> bool:
    """Multilingual Whisper vocabularies have 51865+ entries incl. <|translate|> right after the languages."""
    tid = tokenizer.convert_tokens_to_ids("<|translate|>")
    return tid is not None and tid != tokenizer.unk_token_id and len(tokenizer) > 51000


def whisper_target_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a transcript as Whisper emits it: a leading space, no special tokens."""
    return tokenizer.encode(" " + text.strip(), add_special_tokens=False)


def whisper_log_mel(feature_extractor, audios: Sequence[np.ndarray], cache_mb: float = 0.0) -> torch.Tensor:
    """(B, n_mels, frames) log-mel features of a Whisper front end, each clip padded (or cut) to its 30 s window.

    With ``cache_mb`` > 0 a clip's features are computed once per process and kept, up to ``cache_mb`` MB
    (:func:`common.teachers.encoder_cache.shared_feature_cache`, keyed by the waveform's bytes): the window is fixed,
    so a clip's features do not depend on the batch it is in, and the cached batch equals the computed one exactly.
    Never kept: an extractor that pads to the batch's longest clip (the Ark student's) or that dithers."""
    audios = as_numpy(audios)

    def compute(rows: Sequence[int]) -> torch.Tensor:
        with without_autocast():
            return feature_extractor(
                [audios[i] for i in rows], sampling_rate=TARGET_SR, return_tensors="pt"
            ).input_features

    fixed = getattr(feature_extractor, "n_samples", None) is not None and not getattr(feature_extractor, "dither", 0.0)
    if not (cache_mb and fixed):
        return compute(range(len(audios)))
    from common.teachers.encoder_cache import shared_feature_cache, waveform_keys

    feats, _ = shared_feature_cache(feature_extractor, cache_mb).states(waveform_keys(audios), compute)
    return feats


class WhisperCollator:
    """Log-mel features (padded to 30 s) and, when ``with_labels``, teacher-forcing inputs.

    ``decoder_input_ids`` = prefix + text; ``labels`` = the same shifted by one (text + <|endoftext|>),
    with the forced prefix and padding set to -100 so no loss is spent on given tokens. ``feature_cache_mb``: keep each
    clip's features in the process's store (:func:`whisper_log_mel`; exact), e.g. across epochs.
    """

    def __init__(
        self,
        processor,
        with_labels: bool = True,
        max_target_len: int = 440,
        multilingual_task: str = "transcribe",
        feature_cache_mb: float = 0.0,
    ) -> None:
        self.fe = processor.feature_extractor
        self.tok = processor.tokenizer
        self.with_labels = with_labels
        self.max_target_len = max_target_len
        self.task = multilingual_task
        self.eot = self.tok.convert_tokens_to_ids("<|endoftext|>")
        self.feature_cache_mb = feature_cache_mb

    def features(self, audios: Sequence[np.ndarray]) -> torch.Tensor:
        return whisper_log_mel(self.fe, audios, self.feature_cache_mb)  # (B, n_mels, 3000)

    def with_feature_cache(self, cache_mb: float) -> WhisperCollator:
        """This collator keeping its clips' features under ``cache_mb`` (a copy; this one is unchanged)."""
        other = copy.copy(self)
        other.feature_cache_mb = cache_mb
        return other

    def __call__(self, audios: list[np.ndarray], texts: list[str], languages: list[str]) -> dict[str, Any]:
        batch: dict[str, Any] = {"input_features": self.features(audios)}
        if not self.with_labels:
            return batch
        seqs, n_prefix = [], []
        for text, lang in zip(texts, languages):
            prefix = whisper_prefix(self.tok, lang, self.task)
            body = whisper_target_ids(self.tok, text)[: self.max_target_len]
            seqs.append(prefix + body + [self.eot])
            n_prefix.append(len(prefix))
        T = max(len(s) for s in seqs) - 1
        dec = torch.full((len(seqs), T), self.eot, dtype=torch.long)
        labels = torch.full((len(seqs), T), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, (s, p) in enumerate(zip(seqs, n_prefix)):
            n = len(s) - 1
            dec[i, :n] = torch.tensor(s[:-1])
            mask[i, :n] = 1
            labels[i, p - 1 : n] = torch.tensor(s[p:])  # predict the text and <|endoftext|>, not the prefix
        batch.update(decoder_input_ids=dec, decoder_attention_mask=mask, labels=labels)
        return batch


__all__ = ["WhisperCollator", "whisper_prefix", "whisper_target_ids", "is_multilingual"]
