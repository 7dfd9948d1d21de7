"""Reading run directories (training runs from ``asr-distill fit`` and evaluations from ``asr-distill evaluate``).

Tables, sweeps, the demo and the notebooks read results only through these functions.

A training run: ``config.yaml``, ``summary.json`` (last), ``tb/`` (TensorBoard), ``eval/`` (an evaluation run).
An evaluation run: ``summary.json`` with ``sets`` and, per set, ``errs.jsonl`` (one scored utterance per line).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.io import SUMMARY


class RunError(ValueError):
    """A run directory that cannot be read (missing, unfinished, malformed)."""


def eval_dir(run_dir: str | Path) -> Path:
    """The evaluation directory of a run: ``RUN/eval`` for a training run, the run itself for an evaluation."""
    run_dir = Path(run_dir)
    return run_dir / "eval" if (run_dir / "eval" / SUMMARY).is_file() else run_dir


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        state = "does not exist" if not Path(run_dir).exists() else "is not finished (no summary.json)"
        raise RunError(f"run directory {run_dir} {state}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: not valid JSON ({err})") from None


def set_results(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per test set: the corpus-level counts and rates of a run (``summary.json``'s ``sets``)."""
    summary = load_summary(eval_dir(run_dir))
    if "sets" not in summary:
        raise RunError(f"run directory {run_dir} has no evaluated test sets")
    return summary["sets"]


def utterance_errors(run_dir: str | Path, set_name: str) -> list[dict[str, Any]]:
    """The per-utterance scores of one set (``errs.jsonl``): ids, texts, S/D/I, reference units, alignment."""
    path = eval_dir(run_dir) / set_name / "errs.jsonl"
    if not path.is_file():
        raise RunError(f"{path} not found (per-utterance errors of set {set_name!r})")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_scalars(run_dir: str | Path, prefix: str = "") -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of a training run: tag -> [(step, value), ...] in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tb"
    if not tb.is_dir():
        raise RunError(f"{tb} not found (TensorBoard logs of a training run)")
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(tb.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith(prefix):
                out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def run_config(run_dir: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{path} not found")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def run_method(run_dir: str | Path) -> str:
    """The ``method`` a training run was made with (its ``config.yaml``)."""
    method = run_config(run_dir).get("method")
    if not method:
        raise RunError(f"{Path(run_dir) / 'config.yaml'} names no method")
    return str(method)
