"""``WhisperTeacher``: any HF ``WhisperForConditionalGeneration`` (including ``bundled:tiny.en``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from common.data.collate import is_multilingual, whisper_log_mel, whisper_prefix, whisper_target_ids
from common.teachers.protocol import Generation
from common.teachers.scoring import (
    TeacherScores,
    freeze,
    pad_targets,
    predicting_states,
    right_pad,
    score_hidden,
    vocab_mask,
)
from common.teachers.token_map import control_token_ids


class WhisperTeacher:
    """Generation and teacher-forced scoring with the forced prefix <|sot|>[<|lang|><|task|>]<|notimestamps|>."""

    def __init__(
        self, model, processor, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        self.model = freeze(model.to(device=device, dtype=dtype))
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.multilingual = is_multilingual(self.tokenizer)
        self.eot = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.stop_id = self.eot
        suppress = list(getattr(model.generation_config, "suppress_tokens", None) or [])
        n_out = model.proj_out.out_features  # timestamp ids lie past the tokenizer
        self.control_ids = sorted(set(control_token_ids(self.tokenizer, {self.eot}, n_out)) | set(suppress))

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> WhisperTeacher:
        from common.whisper import load_whisper

        model, processor = load_whisper(name_or_path, device=device, dtype=dtype)
        return cls(model, processor, device, dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(
        self, audios: Sequence[np.ndarray], languages: Sequence[str], feature_cache_mb: float = 0.0
    ) -> dict[str, Any]:
        """The 30 s log-mel features (``feature_cache_mb``: each clip's kept in the process's store; exact)."""
        feats = whisper_log_mel(self.processor.feature_extractor, audios, feature_cache_mb)
        return {"input_features": feats, "languages": list(languages)}

    def encode_text(self, text: str, language: str = "en") -> list[int]:
        return whisper_target_ids(self.tokenizer, text) + [self.eot]

    def _prefix(self, language: str) -> list[int]:
        return whisper_prefix(self.tokenizer, language if self.multilingual else None)

    @torch.no_grad()
    def generate(
        self,
        batch: dict[str, Any],
        max_new_tokens: int = 128,
        num_beams: int = 1,
        encoder_out: torch.Tensor | None = None,
    ) -> Generation:
        """Greedy/beam transcripts; ``encoder_out`` (from :meth:`encode`) skips a second encoder pass."""
        p = next(self.model.parameters())
        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
        if self.multilingual:
            kw.update(language=batch["languages"], task="transcribe")
        if encoder_out is not None:
            from transformers.modeling_outputs import BaseModelOutput

            seqs = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_out), **kw)
        else:
            seqs = self.model.generate(batch["input_features"].to(p.device, p.dtype), **kw)
        special = set(self.tokenizer.all_special_ids)
        ids = [[t for t in s.tolist() if t not in special and t < len(self.tokenizer)] for s in seqs]
        texts = [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return Generation(texts, ids)

    reusable_encoder = True  # Whisper's encoder sees the audio alone

    @torch.no_grad()
    def decoder_logits(self, encoder_out: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Full-vocabulary logits (B, L, V) teacher-forced on ``decoder_input_ids`` / ``decoder_attention_mask``."""
        dev = encoder_out.device
        out = self.model.model.decoder(
            input_ids=batch["decoder_input_ids"].to(dev),
            attention_mask=batch["decoder_attention_mask"].to(dev),
            encoder_hidden_states=encoder_out,
        )
        return self.model.proj_out(out.last_hidden_state)

    @torch.no_grad()
    def encode(self, batch: dict[str, Any]) -> torch.Tensor:
        p = next(self.model.parameters())
        return self.model.model.encoder(batch["input_features"].to(p.device, p.dtype)).last_hidden_state

    @torch.no_grad()
    def score(
        self,
        batch: dict[str, Any],
        targets: Sequence[Sequence[int]],
        top_k: int,
        encoder_out: torch.Tensor | None = None,
        block_control: bool = False,
        tau: float | None = None,
    ) -> TeacherScores:
        """Teacher-forced: decoder input = prefix + target[:-1]; position j predicts target[j]. ``block_control``:
        ``control_ids`` (every special token but <|endoftext|>, the timestamp ids, ``suppress_tokens``) are masked out
        of the distribution first."""
        langs = batch.get("languages") or ["en"] * len(targets)
        prefixes = [self._prefix(l) for l in langs]
        tgt, mask = pad_targets(targets, self.eot)
        B, T = tgt.shape
        dec, att = right_pad([pre + list(t)[:-1] for pre, t in zip(prefixes, targets)], self.eot)
        enc = self.encode(batch) if encoder_out is None else encoder_out
        dev = enc.device
        out = self.model.model.decoder(input_ids=dec.to(dev), attention_mask=att.to(dev), encoder_hidden_states=enc)
        hidden = predicting_states(out.last_hidden_state, [len(p) for p in prefixes], T)
        head = self.model.proj_out
        blocked = vocab_mask(self.control_ids, head.out_features, dev) if block_control else None
        return score_hidden(hidden, head, tgt.to(dev), mask.to(dev), top_k, blocked=blocked, tau=tau)
