import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from common.data.manifests import ManifestError, from_kaldi_dir, from_lhotse, load_manifest, set_name


def _wav(path, seconds=1.0, sr=16000, channels=1):
    x = (0.1 * np.random.default_rng(0).standard_normal((int(sr * seconds), channels))).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr)
    return path


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_relative_absolute_duration_language_offset(tmp_path):
    _wav(tmp_path / "set" / "audio" / "a.wav", 1.0)
    b = _wav(tmp_path / "elsewhere" / "b.flac", 2.0, sr=48000, channels=2)
    m = _jsonl(
        tmp_path / "set" / "manifest.jsonl",
        [
            {"audio_filepath": "audio/a.wav", "text": "hello world", "duration": 1.0},
            {"audio_filepath": str(b), "text": "你好世界"},
            {"audio_filepath": str(b), "text": "second half", "offset": 1.0, "duration": 0.5, "language": "English"},
        ],
    )
    cuts, report = load_manifest(m)
    assert report.n_ok == 3 and not report.problems
    c = list(cuts)
    assert c[0].supervisions[0].language == "en" and c[0].duration == pytest.approx(1.0)
    assert c[1].supervisions[0].language == "zh" and c[1].duration == pytest.approx(2.0)
    assert c[2].start == pytest.approx(1.0) and c[2].duration == pytest.approx(0.5)
    assert set_name(m) == "set"


@pytest.fixture
def bad_manifest(tmp_path):
    good = _wav(tmp_path / "good.wav")
    sr22 = _wav(tmp_path / "sr.wav", sr=22050)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF0000WAVEjunkjunkjunk")
    lines = [
        json.dumps({"audio_filepath": str(good), "text": "fine"}),
        json.dumps({"audio_filepath": str(tmp_path / "missing.wav"), "text": "gone"}),
        json.dumps({"audio_filepath": str(corrupt), "text": "broken"}),
        json.dumps({"audio_filepath": str(good), "text": "   "}),
        json.dumps({"audio_filepath": str(good), "text": "long", "duration": 9.0}),
        json.dumps({"audio_filepath": str(sr22), "text": "rate", "sample_rate": 16000}),
    ]
    m = tmp_path / "bad" / "manifest.jsonl"
    m.parent.mkdir()
    m.write_bytes(("\n".join(lines) + "\n").encode() + b'{"audio_filepath": "x.wav", "text": "caf\xe9"}\n')
    return m


def test_error_policy_refuses_with_a_first_line_naming_the_manifest(bad_manifest):
    with pytest.raises(ManifestError) as err:
        load_manifest(bad_manifest, "error")
    first = str(err.value).splitlines()[0]
    assert str(bad_manifest) in first and "6 bad row(s)" in first


def test_skip_policy_counts_each_problem(bad_manifest):
    cuts, report = load_manifest(bad_manifest, "skip")
    assert len(cuts) == 1 and report.n_rows == 7
    assert report.counts() == {
        "missing_audio": 1,
        "unreadable_audio": 1,
        "empty_text": 1,
        "duration_mismatch": 1,
        "sample_rate_mismatch": 1,
        "non_utf8": 1,
    }
    assert any("missing.wav" in str(p) for p in report.problems)
    assert any(p.source.endswith(":7") for p in report.problems if p.kind == "non_utf8")


def test_validate_cli_reports_and_exits_nonzero(bad_manifest):
    out = subprocess.run(
        [sys.executable, "-m", "common.cli", "data", "validate", str(bad_manifest)], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "1 ok, 6 bad" in out.stdout and "sample_rate_mismatch" in out.stdout


def test_lhotse_roundtrip(tmp_path):
    a = _wav(tmp_path / "a.wav", 1.5)
    m = _jsonl(tmp_path / "s" / "manifest.jsonl", [{"audio_filepath": str(a), "text": "hi there"}])
    cuts, _ = load_manifest(m)
    lh = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(lh)
    cuts2, rep = load_manifest(lh)
    c = cuts2[0]
    assert rep.n_ok == 1 and c.supervisions[0].text == "hi there" and c.duration == pytest.approx(1.5)
    assert from_lhotse(lh)[1].n_ok == 1


def test_kaldi_dir_with_segments(tmp_path):
    a = _wav(tmp_path / "rec1.wav", 3.0)
    d = tmp_path / "kaldi"
    d.mkdir()
    (d / "wav.scp").write_text(f"rec1 {a}\nrec2 sox x.wav -t wav - |\n")
    (d / "segments").write_text("u1 rec1 0.0 1.0\nu2 rec1 1.0 2.5\nu3 rec2 0 1\n")
    (d / "text").write_text("u1 first part\nu2 second part\nu3 piped\n")
    with pytest.raises(ManifestError, match="piped|1 bad"):
        from_kaldi_dir(d)
    cuts, rep = load_manifest(d, "skip")
    assert [c.id for c in cuts] == ["u1", "u2"] and rep.counts() == {"unreadable_audio": 1}
    assert cuts[1].start == pytest.approx(1.0) and cuts[1].duration == pytest.approx(1.5)


def test_hf_dataset_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    a = _wav(tmp_path / "a.wav", 1.0)
    ds = datasets.Dataset.from_dict({"audio": [str(a), str(a)], "text": ["one", "two"]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    from common.data.manifests import from_hf_dataset

    cuts, rep = from_hf_dataset(ds, tmp_path / "cache", name="toy")
    assert rep.n_ok == 2 and [c.supervisions[0].text for c in cuts] == ["one", "two"]
