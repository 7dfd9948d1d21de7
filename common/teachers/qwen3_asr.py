"""``Qwen3ASRTeacher`` on transformers' native ``Qwen3ASRForConditionalGeneration`` (transformers >= 5.13).

Prompt (the checkpoints' chat template, built here token by token so offsets are exact)::

    <|im_start|>system\\n<|im_end|>\\n<|im_start|>user\\n<|audio_start|><|audio_pad|> x N<|audio_end|><|im_end|>\\n
    <|im_start|>assistant\\nlanguage {Name}<asr_text>{transcript}<|im_end|>

N comes from the processor's own formula (``Qwen3ASRProcessor._get_audio_token_length``). Forcing the
language = appending ``language {Name}<asr_text>``; the name is inferred from the transcript's script.
Scoring is one forward pass without grad on right-padded rows (positions of real tokens unchanged); only the
transcript positions are projected to the 151,936-token vocabulary, in chunks (:func:`score_hidden`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from common.audio import TARGET_SR
from common.audio import as_numpy as _as_numpy
from common.teachers.protocol import Generation
from common.teachers.qwen3 import load_qwen3_tokenizer
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
from common.text import LANGUAGE_NAMES, detect_language
from common.training.precision import without_autocast

# Ids of the Qwen3-ASR special tokens. audio_pad (151676) is Qwen3ASRConfig.audio_token_id in transformers;
# the others are the ids the released checkpoints use (tokenizer added tokens), asserted when built.
QWEN3_ASR_SPECIALS = {"<|audio_start|>": 151669, "<|audio_end|>": 151670, "<|audio_pad|>": 151676, "<asr_text>": 151704}


def build_qwen3_asr_tokenizer():
    """The real Qwen3 tokenizer plus the Qwen3-ASR special tokens at the checkpoints' ids.

    Ids between them are held by reserved placeholder tokens so each special lands on its id.
    """
    tok = load_qwen3_tokenizer()
    next_id = len(tok)
    for token, tid in sorted(QWEN3_ASR_SPECIALS.items(), key=lambda kv: kv[1]):
        if tok.convert_tokens_to_ids(token) == tid:
            continue
        if tid < next_id:
            raise ValueError(f"cannot place {token} at id {tid}: the tokenizer already has {next_id} tokens")
        fill = [f"<|qwen3_asr_reserved_{i}|>" for i in range(next_id, tid)]
        tok.add_special_tokens({"additional_special_tokens": fill + [token]}, replace_extra_special_tokens=False)
        next_id = len(tok)
    for token, tid in QWEN3_ASR_SPECIALS.items():
        assert tok.convert_tokens_to_ids(token) == tid, (token, tok.convert_tokens_to_ids(token), tid)
    return tok


def audio_token_lengths(feature_lengths: torch.Tensor, n_window: int = 50) -> list[int]:
    """Audio placeholder tokens per utterance, by transformers' own Qwen3-ASR formula."""
    from transformers.models.qwen3_asr.processing_qwen3_asr import Qwen3ASRProcessor

    return [int(x) for x in Qwen3ASRProcessor._get_audio_token_length(None, feature_lengths, n_window)]


class Qwen3ASRTeacher:
    def __init__(
        self,
        model,
        tokenizer,
        feature_extractor=None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from transformers import Qwen3ASRFeatureExtractor

        self.model = freeze(model.to(device=device, dtype=dtype))
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor or Qwen3ASRFeatureExtractor()
        self.processor = self.feature_extractor
        self.stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else self.stop_id
        self.n_window = model.config.audio_config.n_window
        self.asr_text_id = tokenizer.convert_tokens_to_ids("<asr_text>")
        n_out = model.lm_head.out_features  # the embedding is padded past the tokenizer (151936 rows)
        self.control_ids = control_token_ids(tokenizer, {self.stop_id}, n_out)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Qwen3ASRTeacher:
        from transformers import AutoProcessor, Qwen3ASRForConditionalGeneration

        model = Qwen3ASRForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype)
        proc = AutoProcessor.from_pretrained(name_or_path)
        return cls(model, proc.tokenizer, proc.feature_extractor, device, dtype)

    # -- inputs ---------------------------------------------------------------------------------
    def prepare(
        self, audios: Sequence[np.ndarray], languages: Sequence[str] | None = None, feature_cache_mb: float = 0.0
    ) -> dict[str, Any]:
        """Features padded to the batch's longest clip (so a clip's depend on its batch: ``feature_cache_mb`` keeps
        nothing here) and their mask."""
        with without_autocast():
            f = self.feature_extractor(
                _as_numpy(audios),
                sampling_rate=TARGET_SR,
                padding=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
        mask = f["attention_mask"]
        return {
            "input_features": f["input_features"],
            "input_features_mask": mask,
            "n_audio_tokens": audio_token_lengths(mask.sum(-1), self.n_window),
            "languages": list(languages) if languages is not None else None,
        }

    def prompt_ids(self, n_audio: int, language: str | None) -> list[int]:
        text = (
            "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|>"
            + "<|audio_pad|>" * n_audio
            + "<|audio_end|><|im_end|>\n<|im_start|>assistant\n"
        )
        if language is not None:
            text += f"language {LANGUAGE_NAMES.get(language, language)}<asr_text>"
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_text(self, text: str, language: str | None = None) -> list[int]:
        return self.tokenizer.encode(text.strip(), add_special_tokens=False) + [self.stop_id]

    reusable_encoder = False  # its audio tower's output is spliced into the LM prompt, not a separate encoder input

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError("a Qwen3-ASR teacher has no reusable encoder states (reusable_encoder is False)")

    def decoder_logits(self, encoder_out: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError("online full-vocabulary KD needs an encoder-decoder teacher (Whisper)")

    # -- scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def score(
        self,
        batch: dict[str, Any],
        targets: Sequence[Sequence[int]],
        top_k: int,
        languages: Sequence[str] | None = None,
        block_control: bool = False,
        tau: float | None = None,
        encoder_out: torch.Tensor | None = None,
    ) -> TeacherScores:
        """Teacher-forced log-probs at the transcript positions; the language of each row is given or (None)
        inferred from its text (CJK -> Chinese, else English). ``block_control``: ``control_ids`` masked out first.
        ``encoder_out`` is refused: the audio tower's output is merged into the prompt (``reusable_encoder`` False)."""
        if encoder_out is not None:
            raise ValueError("Qwen3-ASR teachers cannot reuse encoder states (reusable_encoder is False)")
        languages = languages or batch.get("languages") or [None] * len(targets)
        languages = [
            lang or detect_language(self.tokenizer.decode(list(t), skip_special_tokens=True))
            for lang, t in zip(languages, targets)
        ]
        prompts = [self.prompt_ids(n, lang) for n, lang in zip(batch["n_audio_tokens"], languages)]
        ids, att = right_pad([p + list(t)[:-1] for p, t in zip(prompts, targets)], self.pad_id)
        dev = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        out = self.model.model(
            input_ids=ids.to(dev),
            input_features=batch["input_features"].to(dev, dtype),
            input_features_mask=batch["input_features_mask"].to(dev),
            attention_mask=att.to(dev),
        )
        tgt, mask = pad_targets(targets, self.pad_id)
        hidden = predicting_states(
            out.last_hidden_state, [len(p) for p in prompts], tgt.shape[1]
        )  # only what is scored
        blocked = vocab_mask(self.control_ids, self.model.lm_head.out_features, dev) if block_control else None
        return score_hidden(hidden, self.model.lm_head, tgt.to(dev), mask.to(dev), top_k, blocked=blocked, tau=tau)

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: int = 128, num_beams: int = 1) -> Generation:
        """Greedy/beam transcripts. With ``batch['languages']`` the language is forced; otherwise the model's
        ``language X<asr_text>`` header is parsed off."""
        langs = batch.get("languages") or [None] * len(batch["n_audio_tokens"])
        prompts = [self.prompt_ids(n, lang) for n, lang in zip(batch["n_audio_tokens"], langs)]
        L = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), L), self.pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # generation prompts are left-padded
            ids[i, L - len(p) :] = torch.tensor(p)
            att[i, L - len(p) :] = 1
        dev = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        seqs = self.model.generate(
            input_ids=ids.to(dev),
            attention_mask=att.to(dev),
            input_features=batch["input_features"].to(dev, dtype),
            input_features_mask=batch["input_features_mask"].to(dev),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
        )
        texts, out_ids = [], []
        for s in seqs[:, L:].tolist():
            s = s[: s.index(self.stop_id)] if self.stop_id in s else s
            if self.asr_text_id in s:  # "language X<asr_text>text": keep the text
                s = s[s.index(self.asr_text_id) + 1 :]
            s = [t for t in s if t != self.pad_id]
            out_ids.append(s)
            texts.append(self.tokenizer.decode(s, skip_special_tokens=True).strip())
        return Generation(texts, out_ids)
