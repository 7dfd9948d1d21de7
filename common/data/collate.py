"""Collators: (audios, texts, languages) -> model tensors, built from a model's processor.

They live beside the datamodule because several models share them; a new model brings its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch

from common.audio import TARGET_SR
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


class WhisperCollator:
    """Log-mel features (padded to 30 s) and, when ``with_labels``, teacher-forcing inputs.

    ``decoder_input_ids`` = prefix + text; ``labels`` = the same shifted by one (text + <|endoftext|>),
    with the forced prefix and padding set to -100 so no loss is spent on given tokens.
    """

    def __init__(
        self, processor, with_labels: bool = True, max_target_len: int = 440, multilingual_task: str = "transcribe"
    ) -> None:
        self.fe = processor.feature_extractor
        self.tok = processor.tokenizer
        self.with_labels = with_labels
        self.max_target_len = max_target_len
        self.task = multilingual_task
        self.eot = self.tok.convert_tokens_to_ids("<|endoftext|>")

    def features(self, audios: Sequence[np.ndarray]) -> torch.Tensor:
        with without_autocast():
            # (B, n_mels, 3000)
            return self.fe(list(audios), sampling_rate=TARGET_SR, return_tensors="pt").input_features

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
