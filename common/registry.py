"""The method registry: the one place where the shared layer learns which distillation methods exist.

Each method package declares a :class:`Method` in ``setup.cfg`` under the ``asr_distill.methods`` entry-point group
(``ark_asr = ark_asr.method:METHOD``); the CLI, the demo, sweeps and evaluation look methods up here by name and
never import a method package themselves, so ``common/`` stays free of ``ark_asr`` / ``askd_whisper`` imports and of
import cycles (``tests/test_layering.py`` walks the import graph). Tests and notebooks may :func:`register` a method
directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import distributions
from pathlib import Path
from typing import Any, Optional

ENTRY_POINT_GROUP = "asr_distill.methods"


@dataclass(frozen=True)
class Method:
    """What the shared layer needs from a distillation method."""

    name: str
    """The ``method:`` value of its experiment configs."""
    config: type
    """The experiment config schema (a dataclass with ``run_dir``, ``trainer``, ``optim``, ``data`` sections)."""
    fit: Callable[..., dict]
    """``fit(cfg, resume=False, overwrite=False, ...) -> summary``: train one experiment into ``cfg.run_dir``."""
    load_transcriber: Optional[Callable[[Path, str, Any], Any]] = None
    """``(model_dir, device, dtype) -> Transcriber | None``: a transcriber for a model directory this method saved
    (None for a directory it does not recognise); ``asr-distill evaluate`` asks every method before trying
    Whisper/Qwen3-ASR."""
    export: Optional[Callable[[Path, Path], Path]] = None
    """``(checkpoint, out_dir) -> out_dir``: a self-contained model directory from a training checkpoint."""
    build_student: Optional[Callable[..., Any]] = None
    """``(teacher, n_layers) -> model``: the method's untrained student of a teacher (latency measurements)."""


_METHODS: dict[str, Method] = {}
_loaded = False


def register(method: Method) -> Method:
    """Add (or replace) a method; returns it, so a module can write ``METHOD = register(Method(...))``."""
    _METHODS[method.name] = method
    return method


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    # every distribution's entry points, not entry_points()'s first-found per name: a stale ``*.egg-info`` left in
    # the working directory by an older editable build would otherwise hide the installed metadata
    eps = {ep.name: ep for dist in distributions() for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP}
    for ep in eps.values():
        method = ep.load()
        if not isinstance(method, Method) or method.name != ep.name:
            raise TypeError(f"entry point {ep.name} = {ep.value} must be a common.registry.Method named {ep.name!r}")
        _METHODS.setdefault(method.name, method)


def methods() -> dict[str, Method]:
    """Every registered method by name."""
    _load_entry_points()
    return dict(_METHODS)


def get(name: str) -> Method:
    """The method called ``name``; an unknown name is a one-line error listing the known ones."""
    known = methods()
    if name not in known:
        listed = ", ".join(sorted(known)) or "none (is the package installed? `make install`)"
        raise ValueError(f"unknown method {name!r}; registered methods: {listed}")
    return known[name]
