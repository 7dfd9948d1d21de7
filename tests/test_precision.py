"""Mixed precision outside Lightning's step (common.training.precision): decoding and teacher caches at the precision a
run trained in, float32 log-mel front ends inside autocast, and the demo's choice of precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.training.precision import autocast_for, cpu_has_native_bf16, demo_precision, without_autocast


@pytest.mark.unit
def test_autocast_for_mixed_precisions_only():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast_for("bf16-mixed", "cpu"):
        assert lin(x).dtype == torch.bfloat16
        with without_autocast():  # the front ends: float32 inside an autocast region
            assert lin(x).dtype == torch.float32
        assert lin(x).dtype == torch.bfloat16  # and autocast again after it
    for p in ("32-true", "bf16-true"):
        with autocast_for(p, "cpu"):
            assert not torch.is_autocast_enabled("cpu") and lin(x).dtype == torch.float32


@pytest.mark.unit
def test_demo_precision_auto_follows_the_cpu_and_explicit_choices_are_kept():
    assert demo_precision("auto") == ("bf16-mixed" if cpu_has_native_bf16() else "32-true")
    assert demo_precision("32-true") == "32-true" and demo_precision("bf16-mixed") == "bf16-mixed"
    with pytest.raises(ValueError, match="--precision"):
        demo_precision("fp8")


def test_front_ends_under_autocast_equal_float32(whisper_tiny, teacher):
    """The Whisper collator's and the Whisper teacher's log-mel features (torch STFT, then numpy) under bf16 autocast
    equal the float32 ones exactly (without the guard Hugging Face's extractor fails: numpy has no bf16), and the Ark
    student's front end too."""
    from conftest import ark_model_cfg

    from ark_asr.model import build_student
    from common.data.collate import WhisperCollator

    _, proc = whisper_tiny
    col, ark = WhisperCollator(proc, with_labels=False), build_student(ark_model_cfg())
    audio = [np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000)]

    def feats():
        langs = ["en", "en"]
        return (
            col.features(audio),
            teacher.prepare(audio, langs)["input_features"],
            ark.features(audio)["input_features"],
        )

    ref = feats()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = feats()
    for r, g in zip(ref, got):
        assert g.dtype == torch.float32 and torch.equal(g, r)
