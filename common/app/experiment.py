"""Experiment configs: which method a config names, its typed config, and its ``fit`` (through the registry).

The CLI, the demo and sweeps all start an experiment through :func:`load_experiment` / :func:`fit_experiment`; none
of them imports a method package (see :mod:`common.registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import registry
from common.config import load, read_with_bases


def method_of(path: str | Path | None, overrides: list[str]) -> str:
    """The ``method`` named by an override or by the config file (following ``_base_``); a registered name."""
    method = None
    for o in overrides:
        if o.startswith("method="):
            method = o.split("=", 1)[1]
    if method is None:
        if path is None:
            raise ValueError("fit needs -c CONFIG (with a 'method:' key)")
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(read_with_bases(Path(path)))
        method = data.get("method") if isinstance(data, dict) else None
    known = registry.methods()
    if method not in known:
        raise ValueError(f"config {path}: 'method' must be one of {', '.join(sorted(known))}, got {method!r}")
    return method


def load_experiment(path: str | Path, overrides: list[str]) -> tuple[Any, Callable[..., dict]]:
    """An experiment config, validated by its method's schema, and the method's ``fit``."""
    method = registry.get(method_of(path, overrides))
    return load(method.config, path, overrides), method.fit


def fit_experiment(path: str | Path, overrides: list[str], **kwargs: Any) -> dict:
    """Load and run one experiment (``kwargs``: resume, overwrite, ...); returns its summary."""
    cfg, fit = load_experiment(path, overrides)
    return fit(cfg, **kwargs)
