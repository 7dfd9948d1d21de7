"""The Ark-ASR student: Whisper-style encoder -> LayerNorm -> merge m frames -> MLP adapter -> causal LM.

Prompt (audio embeddings replace the <|audio|> placeholders)::

    <|user|><|begin_of_audio|><|audio|> x N<|end_of_audio|>{instruction}<|assistant|>{transcript}<|im_end|>

Audio is not padded to Whisper's 30 s window: features are padded to the batch's longest utterance and the
encoder's positional table is sliced, so an utterance of F feature frames gives ceil(F / 2) // m audio tokens.
Teacher forcing uses right padding (positions unchanged); generation uses left padding with HF ``generate``
(KV cache), control tokens blocked except the stop token, and the student's top-k ids recorded at every step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.utils.checkpoint

from ark_asr.config import ArkModelConfig
from common.audio import TARGET_SR
from common.audio import as_numpy as _as_numpy
from common.teachers.scoring import pad_targets, predicting_states, right_pad
from common.training.precision import without_autocast

ARK_SPECIALS = ["<|user|>", "<|begin_of_audio|>", "<|audio|>", "<|end_of_audio|>", "<|assistant|>", "<|im_end|>"]
STOP = "<|im_end|>"

# Architectures for offline (meta-device) construction at paper scale; the real weights come from the hub.
PRESETS: dict[str, dict[str, Any]] = {
    "whisper-large-v3": dict(
        d_model=1280,
        encoder_layers=32,
        encoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_layers=2,
        decoder_attention_heads=20,
        decoder_ffn_dim=5120,
        num_mel_bins=128,
        vocab_size=51866,
    ),
    # Qwen2.5-0.5B's architecture: the paper's LM family (the released ARK-ASR-0.6B's exact LM config is in its own
    # config.json; start from the release with model.init_from to get it)
    "qwen2-0.5b": dict(
        model_type="qwen2",
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
    ),
    "qwen3-0.6b": dict(  # ablation: a Qwen3 LM (q/k-norm, no q/k/v biases) cannot load Qwen2 weights
        model_type="qwen3",
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        intermediate_size=3072,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
    ),
}


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
class RotarySelfAttention(nn.Module):
    """Whisper self-attention with rotary position embeddings on q and k (replaces the absolute table).

    Reuses the wrapped ``WhisperAttention``'s projections, so pretrained weights and their names carry over.
    ``style`` (RoPE, Su et al. 2021; theta_i = base^(-2i / d_rot)):

    - ``released``: the released ARK-ASR checkpoints' scheme (GLM style): only the first d_rot = d_head / 2 dimensions
      of each head rotate, in interleaved pairs (x_2i, x_2i+1) -> (x_2i cos - x_2i+1 sin, x_2i+1 cos + x_2i sin);
      the other half passes unchanged.
    - ``full``: every dimension rotates, half-split pairs (x_i, x_i+d/2): x' = x cos + rotate_half(x) sin.
    """

    def __init__(self, attn: nn.Module, style: str = "released", base: float = 10000.0) -> None:
        super().__init__()
        if style not in ("released", "full"):
            raise ValueError(f"unknown rotary style {style!r}")
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
        self.num_heads, self.head_dim, self.style = attn.num_heads, attn.head_dim, style
        self.rot_dim = self.head_dim // 2 if style == "released" else self.head_dim
        self.register_buffer(
            "inv_freq",
            base ** (-torch.arange(0, self.rot_dim, 2, dtype=torch.float32) / self.rot_dim),
            persistent=False,
        )

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, T, d_head) rotated by position along T."""
        T = x.shape[-2]
        ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * self.inv_freq.to(x.device)[None]
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)  # (T, d_rot / 2)
        if self.style == "full":
            cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
            return x * cos + self._rotate_half(x) * sin
        rot, rest = x[..., : self.rot_dim], x[..., self.rot_dim :]
        pairs = rot.reshape(*rot.shape[:-1], self.rot_dim // 2, 2)  # (B, H, T, d_rot / 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        rot = torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)
        return torch.cat([rot, rest], -1)

    def forward(self, hidden_states: torch.Tensor, **_: Any):
        B, T, _d = hidden_states.shape
        shape = (B, T, self.num_heads, self.head_dim)
        q, k, v = (p(hidden_states).view(shape).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.rotate(q), self.rotate(k)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, T, d_head)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, -1)), None


ROTARY_STYLES = {"rope_released": "released", "rope_full": "full"}


_DROPOUT_RATES = ("dropout", "activation_dropout", "attention_dropout")  # Whisper's layer and attention attributes


class AudioEncoder(nn.Module):
    """The modules of a HF ``WhisperEncoder`` run on variable-length features (no 30 s padding).

    ``positions``: ``absolute`` adds Whisper's learned table (so at most its ``max_source_positions`` frames);
    ``rope_released`` / ``rope_full`` rotate q and k in every self-attention instead (see
    :class:`RotarySelfAttention`), up to ``max_seconds`` of audio. The table stays a parameter either way (the released
    checkpoints carry it unused), so the tensor names are Whisper's.
    """

    def __init__(
        self,
        whisper_encoder: nn.Module,
        drop_final_layernorm: bool,
        positions: str = "absolute",
        max_seconds: float = 40.0,
    ) -> None:
        super().__init__()
        self.conv1, self.conv2 = whisper_encoder.conv1, whisper_encoder.conv2
        self.positions = positions
        self.rope = positions in ROTARY_STYLES
        self.embed_positions = whisper_encoder.embed_positions
        self.layers = whisper_encoder.layers
        if self.rope:
            for layer in self.layers:
                layer.self_attn = RotarySelfAttention(layer.self_attn, ROTARY_STYLES[positions])
        self.layer_norm = nn.Identity() if drop_final_layernorm else whisper_encoder.layer_norm
        self.d_model = whisper_encoder.config.d_model
        # encoder frames run at 50 per second (conv stride 2 over 100 feature frames per second)
        self.max_frames = int(max_seconds * 50) if self.rope else whisper_encoder.config.max_source_positions
        self._no_split_modules = list(getattr(whisper_encoder, "_no_split_modules", None) or ["WhisperEncoderLayer"])
        self.gradient_checkpointing = False  # set by common.training.strategy.enable_activation_checkpointing

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (B, n_mels, F) -> (B, ceil(F/2), d)
        x = nn.functional.gelu(self.conv1(feats))
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)  # (B, T, d)
        if x.shape[1] > self.max_frames:
            what = "the configured model.max_audio_seconds" if self.rope else "the encoder's position table"
            raise ValueError(
                f"audio of {x.shape[1]} encoder frames ({x.shape[1] / 50:.1f} s) exceeds {what} "
                f"({self.max_frames} frames, {self.max_frames / 50:.0f} s)"
            )
        if not self.rope:
            x = x + self.embed_positions.weight[: x.shape[1]].to(x.dtype)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if ckpt and any(p.requires_grad for p in layer.parameters()):
                x = torch.utils.checkpoint.checkpoint(layer, x, None, use_reentrant=False)
            else:
                x = layer(x, attention_mask=None)
            x = x[0] if isinstance(x, tuple) else x
        return self.layer_norm(x)


def build_tokenizer(cfg: ArkModelConfig):
    """The text tokenizer plus the Ark special tokens (added only where missing)."""
    if cfg.tokenizer == "whisper":
        from transformers import WhisperTokenizer

        from common.whisper import resolve_whisper_path

        tok = WhisperTokenizer.from_pretrained(resolve_whisper_path(cfg.encoder))
    elif cfg.tokenizer == "qwen3":
        from common.teachers.qwen3 import load_qwen3_tokenizer

        tok = load_qwen3_tokenizer()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.llm)
    missing = [t for t in ARK_SPECIALS if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else STOP
    return tok


def _whisper_encoder(cfg: ArkModelConfig):
    """(HF WhisperEncoder, WhisperFeatureExtractor) from a checkpoint or a preset."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    if cfg.encoder.startswith("preset:"):
        wcfg = WhisperConfig(**PRESETS[cfg.encoder[len("preset:") :]])
        return WhisperForConditionalGeneration(wcfg).model.encoder, WhisperFeatureExtractor(
            feature_size=wcfg.num_mel_bins
        )
    from common.whisper import load_whisper, resolve_whisper_path

    if cfg.encoder_init == "random":
        wcfg = WhisperConfig.from_pretrained(resolve_whisper_path(cfg.encoder))
        return WhisperForConditionalGeneration(wcfg).model.encoder, WhisperFeatureExtractor(
            feature_size=wcfg.num_mel_bins
        )
    model, proc = load_whisper(cfg.encoder)
    return model.model.encoder.train(), proc.feature_extractor


def llm_from_config(fields: dict[str, Any]) -> nn.Module:
    """A randomly initialised causal LM of the architecture ``fields["model_type"]`` names (qwen2, qwen3, ...), through
    transformers' Auto classes: the same classes ``from_pretrained`` would give for a checkpoint of that type."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = dict(fields)
    model_type = fields.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"model.llm_config.model_type: {model_type!r} is not an architecture transformers knows")
    return AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type].from_dict(fields))


def _llm(cfg: ArkModelConfig, vocab_size: int):
    from transformers import AutoModelForCausalLM

    if cfg.llm == "config" or cfg.llm.startswith("preset:"):
        name = cfg.llm[len("preset:") :]
        if cfg.llm != "config" and name not in PRESETS:
            raise ValueError(f"model.llm: unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
        fields = dict(cfg.llm_config) if cfg.llm == "config" else dict(PRESETS[name])
        fields["vocab_size"] = max(fields.get("vocab_size", 0), vocab_size)
        return llm_from_config(fields)
    llm = AutoModelForCausalLM.from_pretrained(cfg.llm)
    if llm.get_input_embeddings().num_embeddings < vocab_size:
        llm.resize_token_embeddings(vocab_size)
    return llm


class _RecordTopK:
    """A logits processor that records the top-k ids of the processed scores at every step (no copy of V)."""

    def __init__(self, k: int) -> None:
        self.k, self.steps = k, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(scores.topk(self.k, dim=-1).indices)
        return scores


class _BlockTokens:
    """Blocks the given ids (every control token but the stop token)."""

    def __init__(self, banned: torch.Tensor) -> None:
        self.banned = banned

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.banned.to(scores.device)] = float("-inf")
        return scores


# ----------------------------------------------------------------------------------------------
# The student
# ----------------------------------------------------------------------------------------------
class ArkStudent(nn.Module):
    def __init__(self, cfg: ArkModelConfig, tokenizer, encoder: nn.Module, feature_extractor, llm: nn.Module) -> None:
        super().__init__()
        self.cfg, self.tokenizer, self.feature_extractor = cfg, tokenizer, feature_extractor
        self.encoder = AudioEncoder(encoder, cfg.drop_final_layernorm, cfg.encoder_positions, cfg.max_audio_seconds)
        d_enc, d_llm = self.encoder.d_model, llm.config.hidden_size
        self.norm = nn.LayerNorm(d_enc)
        self.adapter = nn.Sequential(nn.Linear(cfg.merge * d_enc, 2 * d_llm), nn.GELU(), nn.Linear(2 * d_llm, d_llm))
        self.llm = llm
        ids = tokenizer.convert_tokens_to_ids
        self.audio_id, self.stop_id, self.pad_id = ids("<|audio|>"), ids(STOP), tokenizer.pad_token_id
        self.n_mels = feature_extractor.feature_size
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)
        if cfg.freeze_adapter:
            self.norm.requires_grad_(False)
            self.adapter.requires_grad_(False)

    # -- inputs ---------------------------------------------------------------------------------
    def features(self, audios: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Log-mel features padded to the longest utterance of the batch + frame counts: the released front end (the
        feature extractor pads the waveforms with zeros; nothing is rounded up). The encoder has no attention mask,
        as in the release, so a short utterance's states depend slightly on what it is batched with."""
        with without_autocast():
            f = self.feature_extractor(
                _as_numpy(audios),
                sampling_rate=TARGET_SR,
                padding="longest",
                truncation=False,  # the extractor would cut at 30 s; the encoder checks its own limit
                return_attention_mask=True,
                return_tensors="pt",
            )
        return {"input_features": f["input_features"], "feature_lens": f["attention_mask"].sum(-1)}

    def n_audio_tokens(self, feature_lens: torch.Tensor) -> list[int]:
        """((frames + 1) // 2) // merge audio tokens per utterance, at least 1 (the release's count)."""
        return [max(1, math.ceil(int(f) / 2) // self.cfg.merge) for f in feature_lens]

    def prompt_ids(self, n_audio: int) -> list[int]:
        text = (
            "<|user|><|begin_of_audio|>"
            + "<|audio|>" * n_audio
            + "<|end_of_audio|>"
            + self.cfg.instruction
            + "<|assistant|>"
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_text(self, text: str) -> list[int]:
        """Transcript ids ending with the stop token."""
        return self.tokenizer.encode(self.cfg.transcript_prefix + text.strip(), add_special_tokens=False) + [
            self.stop_id
        ]

    def encode_audio(self, feats: torch.Tensor) -> torch.Tensor:
        """The encoder's states (B, ceil(F/2), d_enc) of a batch's features, before the trainable norm and adapter."""
        p = next(self.adapter.parameters())
        return self.encoder(feats.to(p.device, p.dtype))

    @property
    def encoder_reusable(self) -> bool:
        """Whether the encoder's states of a batch can be computed once and used again in the same step: the encoder
        is frozen (no parameter takes a gradient) and deterministic (eval mode, or every dropout rate of its modules
        0, as in Whisper's released configs). Then a second pass would give the same tensor, bit for bit."""
        enc = self.encoder
        if any(p.requires_grad for p in enc.parameters()):
            return False
        if not enc.training:
            return True
        for m in enc.modules():  # HF layers keep their rates as floats; nn.Dropout as p
            rates = [m.p] if isinstance(m, nn.Dropout) else [getattr(m, a, 0.0) for a in _DROPOUT_RATES]
            if any(isinstance(r, float) and r > 0 for r in rates):
                return False
        return True

    def audio_embeds(
        self, feats: torch.Tensor, n_tokens: Sequence[int], encoded: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Concatenated adapted audio embeddings of the batch, row after row: (sum n_tokens, d_llm). ``encoded``: the
        batch's :meth:`encode_audio` states from earlier in the step (only where :attr:`encoder_reusable`)."""
        h = self.norm(self.encode_audio(feats) if encoded is None else encoded)  # (B, T, d_enc)
        B, T, d = h.shape
        m = self.cfg.merge
        if T < m:  # a clip shorter than one audio token: zero frames complete it (the release does the same)
            h, T = torch.cat([h, h.new_zeros(B, m - T, d)], 1), m
        h = h[:, : T // m * m].reshape(B, T // m, m * d)  # (B, T/m, m*d)
        a = self.adapter(h)  # (B, T/m, d_llm)
        return torch.cat([a[i, :n] for i, n in enumerate(n_tokens)])

    def _embeds(self, ids: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        emb = self.llm.get_input_embeddings()(ids)
        mask = (ids == self.audio_id).unsqueeze(-1)
        if int(mask.sum()) != audio.shape[0]:
            raise ValueError(f"{int(mask.sum())} audio placeholders for {audio.shape[0]} audio embeddings")
        return emb.masked_scatter(mask, audio.to(emb.dtype))

    # -- teacher forcing ------------------------------------------------------------------------
    def forward_hidden(
        self,
        feats: torch.Tensor,
        feature_lens: torch.Tensor,
        targets: Sequence[Sequence[int]],
        encoded: torch.Tensor | None = None,
    ):
        """Final hidden states at the positions that predict each target token (``encoded``: see :meth:`audio_embeds`).

        Returns hidden (B, T, d_llm), target ids (B, T) and mask (B, T) (right padding, prompt + target[:-1]).
        """
        dev = next(self.llm.parameters()).device
        n_tok = self.n_audio_tokens(feature_lens)
        prompts = [self.prompt_ids(n) for n in n_tok]
        ids, att = right_pad([p + list(t)[:-1] for p, t in zip(prompts, targets)], self.pad_id)
        ids, att = ids.to(dev), att.to(dev)
        emb = self._embeds(ids, self.audio_embeds(feats, n_tok, encoded))
        out = self.backbone()(inputs_embeds=emb, attention_mask=att)
        tgt, mask = pad_targets(targets, self.pad_id)
        tgt, mask = tgt.to(dev), mask.to(dev)
        return predicting_states(out.last_hidden_state, [len(p) for p in prompts], tgt.shape[1]), tgt, mask

    def backbone(self) -> nn.Module:
        """The LM's transformer without its head (final hidden states), also under a PEFT (LoRA) wrapper, whose
        ``.model`` is the whole causal LM, not its transformer; the LoRA layers sit inside it either way."""
        llm = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        return llm.get_decoder()

    @property
    def control_ids(self) -> torch.Tensor:
        """Ids a transcript never contains: every special or added token of the tokenizer (Whisper's task, language
        and timestamp-mode tokens, Qwen3's <think>, tool and FIM tokens, the Ark prompt tokens) and the LM's rows past
        the tokenizer, but not the stop token. Blocked in rollouts and decoding, and left out of S_t."""
        from common.teachers.token_map import control_token_ids

        n_out = self.lm_head().weight.shape[0]
        if getattr(self, "_control", None) is None or self._control[0] != n_out:
            ids = control_token_ids(self.tokenizer, {self.stop_id}, n_out)
            self._control = (n_out, torch.tensor(ids, dtype=torch.long))
        return self._control[1]

    def lm_head(self) -> nn.Linear:
        return self.llm.get_output_embeddings()

    def logits_at(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Student logits only at candidate ids: hidden (B, T, d), ids (B, T, U) (>= 0) -> (B, T, U)."""
        from common.losses import logits_at

        head = self.lm_head()
        return logits_at(hidden.to(head.weight.dtype), head.weight, ids, getattr(head, "bias", None))

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        feats: torch.Tensor,
        feature_lens: torch.Tensor,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        record_topk: int = 0,
        return_encoded: bool = False,
    ) -> dict[str, Any]:
        """Batched KV-cached decoding from left-padded prompts. Returns ``ids`` (lists without the stop token),
        ``stopped`` (bools), with ``record_topk`` ``topk`` ((steps, k) long per row, the chosen id included), and with
        ``return_encoded`` ``encoded``, the encoder's states of the batch (for a re-score in the same step)."""
        from transformers import LogitsProcessorList

        dev = next(self.llm.parameters()).device
        n_tok = self.n_audio_tokens(feature_lens)
        prompts = [self.prompt_ids(n) for n in n_tok]
        L = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), L), self.pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, L - len(p) :], att[i, L - len(p) :] = torch.tensor(p), 1
        ids, att = ids.to(dev), att.to(dev)
        encoded = self.encode_audio(feats)
        emb = self._embeds(ids, self.audio_embeds(feats, n_tok, encoded))
        procs = [_BlockTokens(self.control_ids)]
        rec = _RecordTopK(record_topk) if record_topk else None
        if rec:
            procs.append(rec)
        out = self.llm.generate(
            inputs_embeds=emb,
            attention_mask=att,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_k=None,
            top_p=None,
            eos_token_id=self.stop_id,
            pad_token_id=self.pad_id,
            logits_processor=LogitsProcessorList(procs),
        )
        seqs = out.tolist()
        res: dict[str, Any] = {"ids": [], "stopped": []}
        for s in seqs:
            stopped = self.stop_id in s
            res["ids"].append(s[: s.index(self.stop_id)] if stopped else s)
            res["stopped"].append(stopped)
        if return_encoded:
            res["encoded"] = encoded
        if rec:
            steps = torch.stack(rec.steps, 1) if rec.steps else torch.zeros(len(seqs), 0, record_topk, dtype=torch.long)
            chosen = out[:, : steps.shape[1]].to(steps.device)
            have = (steps == chosen[..., None]).any(-1)  # sampled tokens can fall outside the top-k: put them in
            steps[..., -1] = torch.where(have, steps[..., -1], chosen)
            res["topk"] = [steps[i, : len(r) + int(st)] for i, (r, st) in enumerate(zip(res["ids"], res["stopped"]))]
        return res

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, out: str | Path) -> Path:
        """``ark_config.json``, ``model.safetensors`` (LoRA merged) and the tokenizer/feature-extractor files."""
        from safetensors.torch import save_file

        from common.io import atomic_write_json, publish

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        llm = self.llm
        if hasattr(llm, "merge_and_unload"):  # peft: save plain weights
            import copy

            llm = copy.deepcopy(llm).merge_and_unload()
        sd = {
            **{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()},
            **{f"norm.{k}": v for k, v in self.norm.state_dict().items()},
            **{f"adapter.{k}": v for k, v in self.adapter.state_dict().items()},
            **{f"llm.{k}": v for k, v in llm.state_dict().items()},
        }
        sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
        if "llm.lm_head.weight" in sd and llm.config.tie_word_embeddings:
            sd.pop("llm.lm_head.weight")
        save_file(sd, str(out / "model.safetensors"))
        self.tokenizer.save_pretrained(out)
        self.feature_extractor.save_pretrained(out)
        enc_cfg = self._encoder_config.to_dict()
        atomic_write_json(
            out / "ark_config.json",
            {"model": asdict(self.cfg), "encoder_config": enc_cfg, "llm_config": llm.config.to_dict()},
        )
        return publish(out)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> ArkStudent:
        """A student saved by :meth:`save_pretrained` (``ark_config.json``) or a released ARK-ASR checkpoint directory
        (``config.json`` with ``model_type: arkasr``; see :mod:`ark_asr.release`)."""
        from safetensors.torch import load_file
        from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        from common.config import from_dict

        path = Path(path)
        if not (path / "ark_config.json").is_file():
            return load_release(path, device=device, dtype=dtype)
        meta = json.loads((path / "ark_config.json").read_text())
        fields = {**meta["model"], "lora_rank": 0, "init_from": None}
        if "encoder_rope" in fields:  # saved before encoder_positions existed: rope_full or Whisper's table
            fields["encoder_positions"] = "rope_full" if fields.pop("encoder_rope") else "absolute"
        if fields.get("llm") == "config":  # saved when every LM was a Qwen3
            fields["llm_config"] = {"model_type": meta["llm_config"]["model_type"], **fields["llm_config"]}
        cfg = from_dict(ArkModelConfig, fields)
        # built for real (not on meta): non-persistent buffers such as RoPE frequencies are computed at init
        enc = WhisperEncoder(WhisperConfig.from_dict(meta["encoder_config"]))
        llm = llm_from_config(meta["llm_config"])
        tok = AutoTokenizer.from_pretrained(path)
        fe = AutoFeatureExtractor.from_pretrained(path)
        student = cls(cfg, tok, enc, fe, llm)
        student._encoder_config = WhisperConfig.from_dict(meta["encoder_config"])
        sd = load_file(str(path / "model.safetensors"))
        missing, unexpected = student.load_state_dict(sd, strict=False)
        missing = [m for m in missing if m != "llm.lm_head.weight"]
        if missing or unexpected:
            raise RuntimeError(f"{path}: checkpoint mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
        student.llm.tie_weights()
        return student.to(device=device, dtype=dtype)


# -- released ARK-ASR checkpoints (the files: ark_asr/release.py) ----------------------------------------
def _release_student(path: Path, cfg: dict[str, Any], tok) -> ArkStudent:
    """The randomly initialised student of a release's config.json (on the current default device)."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from ark_asr.release import ReleaseError, release_feature_extractor, text_config

    for key in ("use_rope", "merge_factor"):  # the encoder's positions and the frame merge are read, never guessed
        if key not in cfg:
            raise ReleaseError(f"{path}: config.json has no {key}")
    wcfg = WhisperConfig(**cfg["whisper_config"])
    fe = release_feature_extractor(path, wcfg.num_mel_bins)
    model_cfg = ArkModelConfig(
        encoder=str(path),
        encoder_positions="rope_released" if cfg["use_rope"] else "absolute",
        drop_final_layernorm=True,
        merge=int(cfg["merge_factor"]),
        llm=str(path),
        tokenizer="llm",
        init_from=None,
    )
    text = text_config(cfg)
    if int(text.get("vocab_size", 0)) < len(tok):
        raise ReleaseError(f"{path}: the LM's vocab_size {text.get('vocab_size')} is below the tokenizer's {len(tok)}")
    try:
        llm = llm_from_config(text)
    except (ValueError, TypeError, KeyError) as err:
        raise ReleaseError(f"{path}: cannot build the LM from config.json ({err})") from None
    student = ArkStudent(model_cfg, tok, WhisperEncoder(wcfg), fe, llm)
    student._encoder_config = wcfg
    return student


def load_release(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ArkStudent:
    """A released ARK-ASR directory as an :class:`ArkStudent` (strict, one :class:`~ark_asr.release.ReleaseError` line
    per problem: see :mod:`ark_asr.release`)."""
    from ark_asr.release import check_tensors, read_release_config, release_tokenizer, release_weights

    path = Path(path)
    cfg = read_release_config(path)
    tok = release_tokenizer(path, cfg, ARK_SPECIALS, STOP)
    student = _release_student(path, cfg, tok)
    mapped = check_tensors(path, student, release_weights(path))
    student.load_state_dict(mapped, strict=False)
    if student.llm.config.tie_word_embeddings:
        student.llm.tie_weights()
    return student.to(device=device, dtype=dtype)


def check_release(path: str | Path) -> None:
    """The start-up check of a release directory (before any run directory exists): everything :func:`load_release`
    checks (config.json, the tokenizer's Ark tokens and audio id, every tensor name mapped and every shape fitting,
    nothing missing), with the model built on the meta device and the tensors read from the safetensors headers:
    no weight is loaded."""
    from ark_asr.release import check_tensors, read_release_config, release_tokenizer, release_weights

    p = Path(path)
    cfg = read_release_config(p)
    tok = release_tokenizer(p, cfg, ARK_SPECIALS, STOP)
    with torch.device("meta"):
        student = _release_student(p, cfg, tok)
    check_tensors(p, student, release_weights(p, shapes_only=True))


def check_model_dir(path: str | Path, key: str = "model.init_from") -> None:
    """A start-up check of a model directory to start from, one line naming it: a saved student (``ark_config.json``,
    also as a run directory's ``student/``) or a released ARK-ASR checkpoint (``config.json``, ``model_type:
    arkasr``; see :func:`ark_asr.release.check_release`)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"{key}: model directory {path} not found" if not p.exists() else f"{key}: {path} is a file")
    if (p / "ark_config.json").is_file() or (p / "student" / "ark_config.json").is_file():
        return
    if not (p / "config.json").is_file():
        raise ValueError(
            f"{key}: {path} holds no Ark model (no ark_config.json, student/ark_config.json or a release's config.json)"
        )
    check_release(p)


def build_student(cfg: ArkModelConfig, device: str | torch.device = "cpu") -> ArkStudent:
    """A student from config (``cfg.init_from``: load a saved student instead, e.g. the previous stage's)."""
    if cfg.init_from:
        src = Path(cfg.init_from)
        src = src / "student" if (src / "student" / "ark_config.json").is_file() else src
        student = ArkStudent.from_pretrained(src, device=device)
        # this stage's freezing / LoRA choices apply; the architecture and front end stay the loaded model's
        keep = (
            "encoder_positions",
            "max_audio_seconds",
            "merge",
            "drop_final_layernorm",
            "instruction",
            "transcript_prefix",
        )
        student.cfg = replace(cfg, **{k: getattr(student.cfg, k) for k in keep})
        student.encoder.requires_grad_(not cfg.freeze_encoder)
        for m in (student.norm, student.adapter):
            m.requires_grad_(not cfg.freeze_adapter)
    else:
        tok = build_tokenizer(cfg)
        with torch.device(device):
            enc, fe = _whisper_encoder(cfg)
            llm = _llm(cfg, len(tok))
        student = ArkStudent(cfg, tok, enc, fe, llm)
        student._encoder_config = enc.config
    if cfg.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
        student.llm = get_peft_model(student.llm, lcfg)
    return student


class ArkTranscriber:
    """``common.evaluate.Transcriber`` for a saved Ark student."""

    def __init__(self, student: ArkStudent, name: str = "ark") -> None:
        self.student, self.name = student, name
        self.max_seconds = student.encoder.max_frames * 2 / 100  # encoder positions: 1500 frames = 30 s

    @classmethod
    def from_dir(cls, path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ArkTranscriber:
        return cls(ArkStudent.from_pretrained(path, device, dtype).eval(), name=str(path))

    def collate(self, audios, texts, languages) -> dict[str, Any]:
        return self.student.features(audios)

    @torch.no_grad()
    def transcribe(self, batch: dict[str, Any], decoding) -> list[str]:
        out = self.student.generate(
            batch["input_features"], batch["feature_lens"], max_new_tokens=decoding.max_new_tokens
        )
        return [self.student.decode(ids) for ids in out["ids"]]
