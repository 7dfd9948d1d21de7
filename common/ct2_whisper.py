"""Read a CTranslate2 ``model.bin`` and convert a ``WhisperSpec`` model to a transformers state dict.

Binary layout (ctranslate2 ``python/ctranslate2/specs/model_spec.py``, ``ModelSpec._serialize``),
little-endian, strings as ``uint16 length (incl. NUL)`` + UTF-8 bytes + NUL:

    uint32 binary_version | string spec_name | uint32 spec_revision | uint32 n_variables
    n_variables x { string name | uint8 rank | uint32 dims[rank] | uint8 dtype_id | uint32 n_bytes | bytes }
    uint32 n_aliases | n_aliases x { string alias | string target }

``dtype_id`` indexes (float32, int8, int16, int32, float16, bfloat16). In a Whisper spec the self-attention
q/k/v projections are fused into ``linear_0`` (k has a zero bias: HF Whisper's ``k_proj`` has none),
cross-attention keeps q in ``linear_0`` and fuses k/v into ``linear_1``; ``linear_2`` / the last linear is
the output projection; LayerNorm weights are ``gamma``/``beta``.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")


class CT2FormatError(ValueError):
    pass


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    buf = f.read(size)
    if len(buf) != size:
        raise CT2FormatError("truncated model.bin")
    return struct.unpack("<" + fmt, buf)[0]


def _read_string(f: BinaryIO) -> str:
    n = _read(f, "H")
    raw = f.read(n)
    if len(raw) != n or not raw.endswith(b"\0"):
        raise CT2FormatError("malformed string in model.bin")
    return raw[:-1].decode("utf-8")


def read_ct2_model(path: str | Path) -> tuple[str, int, dict[str, torch.Tensor]]:
    """Return ``(spec_name, spec_revision, variables)`` with aliases resolved to the same tensors."""
    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        version = _read(f, "I")
        if version < 5:
            raise CT2FormatError(f"{path}: unsupported CTranslate2 binary version {version} (need >= 5)")
        spec = _read_string(f)
        revision = _read(f, "I")
        for _ in range(_read(f, "I")):
            name = _read_string(f)
            rank = _read(f, "B")
            dims = [_read(f, "I") for _ in range(rank)]
            dtype_id = _read(f, "B")
            nbytes = _read(f, "I")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise CT2FormatError(f"{path}: truncated variable {name}")
            dtype = _DTYPES[dtype_id]
            if dtype == "bfloat16":
                t = torch.frombuffer(bytearray(data), dtype=torch.bfloat16)
            else:
                t = torch.from_numpy(np.frombuffer(data, dtype=dtype).copy())
            out[name] = t.reshape(dims)
        for _ in range(_read(f, "I")):
            alias, target = _read_string(f), _read_string(f)
            out[alias] = out[target]
    return spec, revision, out


def whisper_dims(variables: dict[str, torch.Tensor]) -> dict[str, int]:
    """Infer the Whisper hyper-parameters from the variable shapes."""

    def n_layers(prefix: str) -> int:
        return len({k.split("/")[1] for k in variables if re.match(rf"{prefix}/layer_\d+/", k)})

    vocab, d_model = variables["decoder/embeddings/weight"].shape
    return {
        "vocab_size": int(vocab),
        "d_model": int(d_model),
        "num_mel_bins": int(variables["encoder/conv1/weight"].shape[1]),
        "encoder_layers": n_layers("encoder"),
        "decoder_layers": n_layers("decoder"),
        "encoder_attention_heads": int(variables["encoder/num_heads"].item()),
        "decoder_attention_heads": int(variables["decoder/num_heads"].item()),
        "encoder_ffn_dim": int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(variables["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(variables["decoder/position_encodings/encodings"].shape[0]),
    }


def whisper_state_dict(
    variables: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Map WhisperSpec variables to ``WhisperForConditionalGeneration`` parameter names."""
    sd: dict[str, torch.Tensor] = {}
    v = {k: t.to(dtype) if t.is_floating_point() else t for k, t in variables.items()}
    d = v["decoder/embeddings/weight"].shape[1]

    def ln(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def lin(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/weight"], v[f"{src}/bias"]

    def qkv(dst: str, src: str) -> None:
        w, b = v[f"{src}/weight"], v[f"{src}/bias"]
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            sd[f"{dst}.{name}.weight"] = w[i * d : (i + 1) * d]
            if name != "k_proj":
                sd[f"{dst}.{name}.bias"] = b[i * d : (i + 1) * d]

    def kv(dst: str, src: str) -> None:
        w, b = v[f"{src}/weight"], v[f"{src}/bias"]
        sd[f"{dst}.k_proj.weight"], sd[f"{dst}.v_proj.weight"] = w[:d], w[d:]
        sd[f"{dst}.v_proj.bias"] = b[d:]

    def ffn(dst: str, src: str) -> None:
        ln(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        lin(f"{dst}.fc1", f"{src}/ffn/linear_0")
        lin(f"{dst}.fc2", f"{src}/ffn/linear_1")

    dims = whisper_dims(variables)
    e, dcd = "model.encoder", "model.decoder"
    lin(f"{e}.conv1", "encoder/conv1")
    lin(f"{e}.conv2", "encoder/conv2")
    sd[f"{e}.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    ln(f"{e}.layer_norm", "encoder/layer_norm")
    for i in range(dims["encoder_layers"]):
        src, dst = f"encoder/layer_{i}", f"{e}.layers.{i}"
        ln(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        qkv(f"{dst}.self_attn", f"{src}/self_attention/linear_0")
        lin(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        ffn(dst, src)
    sd[f"{dcd}.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    sd[f"{dcd}.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    ln(f"{dcd}.layer_norm", "decoder/layer_norm")
    for i in range(dims["decoder_layers"]):
        src, dst = f"decoder/layer_{i}", f"{dcd}.layers.{i}"
        ln(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        qkv(f"{dst}.self_attn", f"{src}/self_attention/linear_0")
        lin(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        ln(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        lin(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        kv(f"{dst}.encoder_attn", f"{src}/attention/linear_1")
        lin(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        ffn(dst, src)
    sd["proj_out.weight"] = v.get("decoder/projection/weight", v["decoder/embeddings/weight"])
    return {k: t.contiguous() for k, t in sd.items()}
