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


def test_bf16_decoding_reads_audio_of_another_rate_in_float32(whisper_tiny, tiny_corpus, tmp_path):
    """A run trained at bf16-mixed decodes its test sets under autocast (common.training.fit.evaluate_test_sets): the
    model calls only. A 22.05 kHz clip (resampled on reading, as the real English clips are) decodes, to the float32
    transcript's error rate within bf16 rounding; torchaudio's resampler itself returns bf16 under autocast (which
    numpy refuses: the failure the guard in common.audio.resample undoes)."""
    import json

    import soundfile as sf
    import torchaudio.functional as taf

    from common.audio import load_audio, resample
    from common.evaluate import DecodeConfig, EvalConfig, MixedPrecisionTranscriber, WhisperTranscriber, run_evaluation

    model, proc = whisper_tiny
    row = json.loads((tiny_corpus / "en_test" / "manifest.jsonl").read_text().splitlines()[0])
    wave = load_audio(tiny_corpus / "en_test" / row["audio_filepath"])
    sf.write(tmp_path / "clip.wav", resample(wave, 16000, 22050), 22050)
    (tmp_path / "set").mkdir()
    manifest = tmp_path / "set" / "manifest.jsonl"
    entry = {**row, "audio_filepath": str(tmp_path / "clip.wav")}
    manifest.write_text(json.dumps(entry) + "\n")
    plain = WhisperTranscriber(model.eval(), proc)
    rates = {}
    for name, tr in (("fp32", plain), ("bf16", MixedPrecisionTranscriber(plain, "bf16-mixed"))):
        ev = EvalConfig(out_dir=str(tmp_path / name), sets=[str(manifest)], decoding=DecodeConfig(max_new_tokens=40))
        res = run_evaluation(ev, transcriber=tr)["sets"]["set"]
        assert res["n_utts"] == 1, res
        rates[name] = res["error_rate"]
    assert abs(rates["bf16"] - rates["fp32"]) <= 0.3, rates  # bf16 rounding moves a word or two at most
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.from_numpy(np.zeros(441, dtype=np.float32))
        assert taf.resample(x, 22050, 16000).dtype == torch.bfloat16
        assert resample(np.zeros(441, dtype=np.float32), 22050, 16000).dtype == np.float32


@pytest.mark.unit
def test_demo_records_the_precisions_its_runs_trained_with(tmp_path):
    """results.json -> environment.precision: the trainer.precision of every run's saved config.yaml (two values when a
    rerun with another --precision reused finished stages); a run without a config is not counted."""
    from common.app.demo import run_precisions

    for name, prec in (("a", "bf16-mixed"), ("b", "bf16-mixed"), ("c", "32-true")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(f"method: ark_asr\ntrainer:\n  precision: {prec}\n")
    (tmp_path / "unfinished").mkdir()
    assert run_precisions([tmp_path / n for n in ("a", "b", "unfinished")]) == ["bf16-mixed"]
    assert run_precisions([tmp_path / n for n in ("a", "c")]) == ["32-true", "bf16-mixed"]
