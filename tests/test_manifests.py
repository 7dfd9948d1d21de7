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


@pytest.mark.unit
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
        [sys.executable, "-m", "common.app.cli", "data", "validate", str(bad_manifest)], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "1 ok, 6 bad" in out.stdout and "sample_rate_mismatch" in out.stdout


@pytest.mark.unit
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


@pytest.mark.unit
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


# -- clear one-liners and counted implausibility (issue 22); each failed on the code before --------------------------
@pytest.mark.unit
def test_duplicate_ids_are_named_with_their_rows(tmp_path):
    """Two distinct absolute paths with the same last two components get the same id: the error names the id and
    both rows (it said only 'duplicate utterance ids')."""
    a = _wav(tmp_path / "disk1" / "spk" / "u.wav")
    b = _wav(tmp_path / "disk2" / "spk" / "u.wav")
    m = _jsonl(
        tmp_path / "set" / "manifest.jsonl",
        [{"audio_filepath": str(a), "text": "a"}, {"audio_filepath": str(b), "text": "b"}],
    )
    with pytest.raises(ManifestError) as err:
        load_manifest(m)
    msg = str(err.value)
    assert "'set/spk/u'" in msg and f"{m}:1" in msg and f"{m}:2" in msg and "give each row an 'id'" in msg


@pytest.mark.unit
def test_a_directory_a_link_loop_and_a_device_are_not_called_missing(tmp_path):
    import os

    (tmp_path / "set" / "adir.wav").mkdir(parents=True)
    os.symlink(tmp_path / "set" / "loop2.wav", tmp_path / "set" / "loop1.wav")
    os.symlink(tmp_path / "set" / "loop1.wav", tmp_path / "set" / "loop2.wav")
    rows = [{"audio_filepath": p, "text": "x"} for p in ("adir.wav", "loop1.wav", "/dev/zero", "gone.wav")]
    _, report = load_manifest(_jsonl(tmp_path / "set" / "manifest.jsonl", rows), policy="skip")
    kinds = [(p.kind, p.message) for p in report.problems]
    assert kinds[0][0] == "not_a_file" and "is a directory" in kinds[0][1]
    assert "symbolic link loop" in kinds[1][1]
    assert kinds[2][0] == "not_a_file" and "not a regular file" in kinds[2][1]
    assert kinds[3][0] == "missing_audio" and "not found" in kinds[3][1]


@pytest.mark.unit
def test_a_byte_order_mark_is_read_and_a_non_number_names_row_and_key(tmp_path):
    _wav(tmp_path / "set" / "a.wav")
    m = tmp_path / "set" / "manifest.jsonl"
    m.write_bytes(b"\xef\xbb\xbf" + json.dumps({"audio_filepath": "a.wav", "text": "hi"}).encode() + b"\n")
    cuts, _ = load_manifest(m)
    assert len(cuts) == 1
    m2 = _jsonl(tmp_path / "set" / "m2.jsonl", [{"audio_filepath": "a.wav", "text": "hi", "duration": "long"}])
    with pytest.raises(ManifestError) as err:
        load_manifest(m2)
    assert f"{m2}:1: bad_value: 'duration' must be a finite number, got 'long'" in str(err.value)


def test_implausible_rows_are_counted_not_refused(tmp_path):
    """2000 words for 1.9 s (a label a decoder's 440-token limit would cut to nothing useful), Han text declared
    English, both counted by validation and printed by `data validate`; the rows still load."""
    _wav(tmp_path / "set" / "a.wav", 1.9)
    _wav(tmp_path / "set" / "b.wav", 2.0)
    m = _jsonl(
        tmp_path / "set" / "manifest.jsonl",
        [
            {"audio_filepath": "a.wav", "text": " ".join(["word"] * 2000), "language": "en"},
            {"audio_filepath": "b.wav", "text": "今天天气很好", "language": "en"},
        ],
    )
    cuts, report = load_manifest(m)
    assert len(cuts) == 2 and [w.kind for w in report.warnings] == ["implausible_rate", "script_mismatch"]
    out = subprocess.run(
        [sys.executable, "-m", "common.app.cli", "data", "validate", str(m)], capture_output=True, text=True
    )
    assert "implausible but kept: implausible_rate=1, script_mismatch=1" in out.stdout and out.returncode == 0


def test_decode_check_reads_in_bounded_memory(tmp_path):
    """`data validate --decode` on a WAV whose header declares 2 hours: decoded block by block (it read the whole
    file into memory: ~8 GB for a 37-hour header). A sparse file, so the test writes almost nothing."""
    import struct

    p = tmp_path / "long.wav"
    sr, n = 16000, 16000 * 7200
    with open(p, "wb") as f:
        f.write(
            b"RIFF" + struct.pack("<I", 36 + 2 * n) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sr, 2 * sr, 2, 16)
        )
        f.write(b"data" + struct.pack("<I", 2 * n))
        f.truncate(44 + 2 * n)  # sparse zeros
    probe = (
        "import resource, sys; from common.audio import decode_check; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; decode_check(sys.argv[1]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(p)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-1000:]
    grew_mb = int(out.stdout.strip()) / 1024
    assert grew_mb < 100, grew_mb  # the whole file as float32 would be 460 MB
