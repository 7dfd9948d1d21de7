"""A tiny random ARK-ASR checkpoint in the release layout (no hub), and an independent forward of that architecture.

Written from the release's description (``model_type: arkasr``; tensor names ``audio_encoder.whisper.*``,
``audio_encoder.layer_norm``, ``audio_encoder.adapting.{0,2}``, ``model.*``; a Whisper-style encoder with rotary
positions on the first half of each head in interleaved pairs, base 10000, no final LayerNorm -> LayerNorm -> 4-frame
merge -> Linear(4 d, 2 d_llm) -> GELU -> Linear(2 d_llm, d_llm) -> a Qwen2 LM), never through ``ark_asr``'s classes:
the weights come from Hugging Face's own WhisperEncoder / Qwen2ForCausalLM and plain ``nn`` layers, and the reference
forward is plain tensor arithmetic (the LM part is transformers' Qwen2ForCausalLM, the reference for Qwen2 itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

ARK_PROMPT_TOKENS = ["<|user|>", "<|assistant|>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|audio|>"]
INSTRUCTION = "Please transcribe this audio."
D_ENC, ENC_HEADS, ENC_LAYERS, D_LLM, MERGE = 64, 4, 2, 32, 4


def release_tokenizer():
    """The Qwen tokenizer with the Ark prompt tokens as added, non-special tokens (as in the release, where
    ``<|user|>`` is not in ``all_special_ids``) and ``<|im_end|>`` as the stop token."""
    from common.teachers.qwen3 import load_qwen3_tokenizer

    tok = load_qwen3_tokenizer()
    tok.add_tokens(ARK_PROMPT_TOKENS, special_tokens=False)
    tok.eos_token = "<|im_end|>"
    return tok


def write_tiny_release(out: Path, seed: int = 0, tokenizer=None) -> Path:
    """config.json, model.safetensors (release names, tied LM head left out), tokenizer files and
    preprocessor_config.json of a random tiny ARK-ASR. Returns ``out``."""
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer if tokenizer is not None else release_tokenizer()
    torch.manual_seed(seed)
    wcfg = WhisperConfig(
        d_model=D_ENC,
        encoder_layers=ENC_LAYERS,
        encoder_attention_heads=ENC_HEADS,
        encoder_ffn_dim=2 * D_ENC,
        decoder_layers=1,
        decoder_attention_heads=ENC_HEADS,
        decoder_ffn_dim=2 * D_ENC,
        num_mel_bins=80,
        max_source_positions=1500,
    )
    text = dict(
        hidden_size=D_LLM,
        intermediate_size=2 * D_LLM,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        rope_theta=10000.0,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="silu",
    )
    encoder = WhisperEncoder(wcfg)
    norm = torch.nn.LayerNorm(D_ENC)
    adapting = torch.nn.Sequential(
        torch.nn.Linear(MERGE * D_ENC, 2 * D_LLM), torch.nn.GELU(), torch.nn.Linear(2 * D_LLM, D_LLM)
    )
    llm = Qwen2ForCausalLM(Qwen2Config(**text))
    for module in (encoder, norm, adapting, llm):  # random everywhere, so a swapped or dropped tensor shows
        for name, p in module.named_parameters():
            with torch.no_grad():
                p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name and p.ndim == 1 else 0.2 * torch.randn_like(p))
    sd = {
        **{f"audio_encoder.whisper.{k}": v for k, v in encoder.state_dict().items()},
        **{f"audio_encoder.layer_norm.{k}": v for k, v in norm.state_dict().items()},
        **{f"audio_encoder.adapting.{k}": v for k, v in adapting.state_dict().items()},
        **{k: v for k, v in llm.state_dict().items() if k != "lm_head.weight"},
    }
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"))
    config = {
        "model_type": "arkasr",
        "architectures": ["ArkasrForConditionalGeneration"],
        "auto_map": {"AutoModelForCausalLM": "modeling_arkasr.ArkasrForConditionalGeneration"},
        **text,
        "whisper_config": {k: v for k, v in wcfg.to_dict().items() if not k.startswith("_")},
        "adapter_type": "mlp",
        "merge_factor": MERGE,
        "spec_aug": False,
        "use_rope": True,
        "max_whisper_length": 1500,
        "mlp_adapter_act": "gelu",
        "audio_token_id": tok.convert_tokens_to_ids("<|audio|>"),
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return out


# -- the independent reference forward ----------------------------------------------------------------------------
def _glm_rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate the first half of each head, pairs (x_2i, x_2i+1) as complex numbers times exp(i t theta_j)."""
    d = x.shape[-1]
    r = d // 2
    theta = base ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)
    t = torch.arange(x.shape[-2], dtype=torch.float64)[:, None]
    z = torch.view_as_complex(x[..., :r].double().reshape(*x.shape[:-1], r // 2, 2).contiguous())
    z = z * torch.polar(torch.ones_like(t * theta), t * theta)
    return torch.cat([torch.view_as_real(z).flatten(-2).to(x.dtype), x[..., r:]], -1)


def reference_audio_embeds(sd: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
    """(1, n_mels, F) features -> (n_tokens, d_llm) audio embeddings, from the release's tensors alone."""
    p = "audio_encoder.whisper."

    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))

    x = F.gelu(F.conv1d(feats, sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, sd[p + "conv2.weight"], sd[p + "conv2.bias"], stride=2, padding=1)).transpose(1, 2)
    B, T, D = x.shape
    hd = D // ENC_HEADS
    for i in range(ENC_LAYERS):
        q = f"{p}layers.{i}."
        h = F.layer_norm(x, (D,), sd[q + "self_attn_layer_norm.weight"], sd[q + "self_attn_layer_norm.bias"])
        Q, K, V = (lin(h, q + f"self_attn.{n}_proj").view(B, T, ENC_HEADS, hd).transpose(1, 2) for n in ("q", "k", "v"))
        Q, K = _glm_rope(Q), _glm_rope(K)
        att = torch.softmax(Q @ K.transpose(-1, -2) / hd**0.5, -1) @ V  # (B, H, T, hd)
        x = x + lin(att.transpose(1, 2).reshape(B, T, D), q + "self_attn.out_proj")
        h = F.layer_norm(x, (D,), sd[q + "final_layer_norm.weight"], sd[q + "final_layer_norm.bias"])
        x = x + lin(F.gelu(lin(h, q + "fc1")), q + "fc2")
    x = F.layer_norm(x, (D,), sd["audio_encoder.layer_norm.weight"], sd["audio_encoder.layer_norm.bias"])
    n = ((feats.shape[-1] + 1) // 2) // MERGE
    x = x[:, : T // MERGE * MERGE].reshape(B, T // MERGE, MERGE * D)
    a = lin(F.gelu(lin(x, "audio_encoder.adapting.0")), "audio_encoder.adapting.2")
    return a[0, : max(n, 1)]


class ReferenceArk:
    """The release's forward from its directory: the encoder above + transformers' Qwen2ForCausalLM."""

    def __init__(self, release: Path) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, WhisperFeatureExtractor

        cfg = json.loads((release / "config.json").read_text())
        self.sd = load_file(str(release / "model.safetensors"))
        text = {
            k: v for k, v in cfg.items() if k in Qwen2Config().to_dict() and k not in ("model_type", "architectures")
        }
        self.llm = Qwen2ForCausalLM(Qwen2Config(**text)).eval()
        self.llm.load_state_dict({k: v for k, v in self.sd.items() if k.startswith("model.")}, strict=False)
        self.llm.tie_weights()
        self.tok = AutoTokenizer.from_pretrained(str(release))
        self.fe = WhisperFeatureExtractor.from_pretrained(str(release))
        self.audio_id, self.stop_id = cfg["audio_token_id"], self.tok.convert_tokens_to_ids("<|im_end|>")
        blocked = set(self.tok.all_special_ids) | set(self.tok.added_tokens_decoder)  # the authors' rule
        self.blocked = sorted((blocked | set(range(len(self.tok), cfg["vocab_size"]))) - {self.stop_id})

    def features(self, audio) -> torch.Tensor:
        return self.fe(audio, sampling_rate=16000, return_tensors="pt", padding="longest", truncation=False)[
            "input_features"
        ]

    def prompt(self, n_audio: int) -> list[int]:
        text = "<|user|><|begin_of_audio|>" + "<|audio|>" * n_audio + "<|end_of_audio|>" + INSTRUCTION + "<|assistant|>"
        return self.tok.encode(text, add_special_tokens=False)

    @torch.no_grad()
    def logits(self, feats: torch.Tensor, ids_after_prompt: list[int]) -> tuple[torch.Tensor, int]:
        """Logits (L, V) of prompt + ids (teacher-forced), and the prompt length."""
        audio = reference_audio_embeds(self.sd, feats)
        prompt = self.prompt(audio.shape[0])
        ids = torch.tensor([prompt + list(ids_after_prompt)])
        emb = self.llm.get_input_embeddings()(ids)
        pos = (ids[0] == self.audio_id).nonzero()[:, 0]
        emb[0, pos] = audio
        return self.llm(inputs_embeds=emb).logits[0], len(prompt)

    @torch.no_grad()
    def greedy(self, feats: torch.Tensor, max_new_tokens: int) -> list[int]:
        out: list[int] = []
        for _ in range(max_new_tokens):
            z, _ = self.logits(feats, out)
            z = z[-1].clone()
            z[self.blocked] = float("-inf")
            nxt = int(z.argmax())
            if nxt == self.stop_id:
                break
            out.append(nxt)
        return out
