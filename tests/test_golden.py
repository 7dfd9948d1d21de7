"""Golden losses: the first training steps of SFT, OPD and ASKD-Whisper with a fixed seed, through the real ``fit``
(optimizer, schedule, sampler), compared with stored values, so that a silent numeric change in a loss, a target
convention, the data order or the front end fails here (torchtune keeps the same kind of test).

When a change is meant to move these numbers, regenerate and commit the file with the change, saying why:

    ASR_DISTILL_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

Tolerance: 1e-3 relative (CPU BLAS kernels differ between machines in the last bits; a real change moves the
losses by far more).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ark_cfg, askd_cfg

GOLDEN = Path(__file__).resolve().parent / "golden_losses.json"
N_STEPS = 3


class _Losses(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        self.values.append(round(float(trainer.callback_metrics["train/loss"]), 6))


def _run(kind: str, tiny_corpus: Path, tmp_path: Path, teacher) -> list[float]:

    losses = _Losses()
    torch.manual_seed(0)
    if kind in ("sft", "opd"):
        from ark_asr.run import fit

        cfg = ark_cfg(tiny_corpus, tmp_path / kind, kind, trainer={"max_steps": N_STEPS, "seed": 0})
        cfg.data.test = []
    else:
        from askd_whisper.run import fit

        cfg = askd_cfg(tiny_corpus, tmp_path / kind, trainer={"max_steps": N_STEPS})
    fit(cfg, teacher=teacher, callbacks=[losses])
    return losses.values


@pytest.mark.parametrize("kind", ["sft", "opd", "askd"])
def test_first_losses_equal_the_golden_values(kind, tiny_corpus, tmp_path, teacher):
    got = _run(kind, tiny_corpus, tmp_path, teacher)
    assert len(got) == N_STEPS and all(v == v for v in got)
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if os.environ.get("ASR_DISTILL_REGEN_GOLDEN"):
        stored[kind] = got
        GOLDEN.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        return
    assert kind in stored, f"no golden losses for {kind}: regenerate (see the module docstring)"
    assert got == pytest.approx(stored[kind], rel=1e-3), (kind, got, stored[kind])
