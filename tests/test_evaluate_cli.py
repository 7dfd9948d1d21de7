import json
import subprocess
import sys

import pytest

from common.app.cli import build_parser, main


def test_help_lists_subcommands_and_each_has_help():
    out = subprocess.run([sys.executable, "-m", "common.app.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"evaluate", "fit", "cache-teacher", "export", "table", "sweep", "demo", "data"} <= set(sub.choices)
    for name, sp in sub.choices.items():
        assert name in out.stdout
        h = sp.format_help()
        own = [a for a in sp._actions if a.help and a.dest != "help"]  # each subcommand documents its own arguments
        own = own or [a for a in sp._actions if a.__class__.__name__ == "_SubParsersAction"]  # or has subcommands
        assert (
            h.startswith(f"usage: asr-distill {name}")
            and own
            and all(a.help in " ".join(h.split()) for a in own if a.help and len(a.help) < 60)
        ), name


def test_corpora_in_one_pool_are_the_corpora_one_by_one(tmp_path):
    """``synthesize_corpora`` (the demo's corpus and en_ood in one process pool, largest split first) writes the same
    manifests and samples as one ``synthesize_corpus`` call per corpus, and its stamps make a second call a no-op.
    The calls one by one run one process at a time with all the cores' torch threads, the pool one process per core
    with one thread each: the resampling's thread count does not change a sample."""
    import numpy as np
    import soundfile as sf

    from common.data.synth import SynthConfig, synthesize_corpora, synthesize_corpus

    def cfgs(root):
        return [
            SynthConfig(out_dir=str(root / "std"), en_sizes=[6, 0, 2], zh_sizes=[0, 0, 0]),
            SynthConfig(out_dir=str(root / "ood"), seed=1, en_sizes=[0, 0, 3], zh_sizes=[0, 0, 0], domain="shifted"),
        ]

    one = [synthesize_corpus(c, progress=False, workers=1) for c in cfgs(tmp_path / "one")]
    pooled = synthesize_corpora(cfgs(tmp_path / "pool"), progress=False)
    assert pooled == [tmp_path / "pool" / "std", tmp_path / "pool" / "ood"]
    for a, b in zip(one, pooled):
        splits = sorted(p.name for p in a.iterdir() if p.is_dir())
        assert splits == sorted(p.name for p in b.iterdir() if p.is_dir()) and splits
        for split in splits:
            assert (a / split / "manifest.jsonl").read_text() == (b / split / "manifest.jsonl").read_text()
            for f in sorted((a / split / "audio").iterdir()):
                assert np.array_equal(sf.read(f)[0], sf.read(b / split / "audio" / f.name)[0]), f.name
    stamps = [(p / "synth.json").stat().st_mtime_ns for p in pooled]
    synthesize_corpora(cfgs(tmp_path / "pool"), progress=False)
    assert [(p / "synth.json").stat().st_mtime_ns for p in pooled] == stamps


def test_synth_deterministic_and_cached(tiny_corpus, tmp_path):
    from common.data.synth import SynthConfig, synthesize_corpus

    a = (tiny_corpus / "en_test" / "manifest.jsonl").read_text()
    cfg = SynthConfig(out_dir=str(tmp_path / "again"), en_sizes=[48, 8, 8], zh_sizes=[16, 4, 4])
    synthesize_corpus(cfg, progress=False)
    assert (tmp_path / "again" / "en_test" / "manifest.jsonl").read_text() == a
    import numpy as np
    import soundfile as sf

    for f in sorted((tiny_corpus / "en_train" / "audio").iterdir())[:12]:  # same samples, not only same texts
        assert np.array_equal(sf.read(f)[0], sf.read(tmp_path / "again" / "en_train" / "audio" / f.name)[0]), f.name
    stamp = (tmp_path / "again" / "synth.json").stat().st_mtime_ns
    synthesize_corpus(cfg, progress=False)  # second call: nothing to do
    assert (tmp_path / "again" / "synth.json").stat().st_mtime_ns == stamp
    rows = [json.loads(l) for l in a.splitlines()]
    assert all(r["language"] == "en" and r["text"] for r in rows)
    zh = [json.loads(l) for l in (tiny_corpus / "zh_test" / "manifest.jsonl").read_text().splitlines()]
    assert all(r["language"] == "zh" for r in zh)
    train = {json.loads(l)["text"] for l in (tiny_corpus / "en_train" / "manifest.jsonl").read_text().splitlines()}
    assert not train & {r["text"] for r in rows}  # splits are disjoint in text


def test_evaluate_run_dir_is_never_overwritten(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "evaluate",
        "--model",
        "bundled:tiny.en",
        "--manifest",
        str(tiny_corpus / "en_test" / "manifest.jsonl"),
        "--out",
        str(out),
        "decoding.max_new_tokens=40",
    ]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())["sets"]["en_test"]
    assert s["n_utts"] == 8 and 0 <= s["error_rate"] and s["rtf"] > 0
    assert main(args) == 2
    assert "already holds a complete run" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_failure_leaves_no_complete_looking_run(tmp_path, capsys):
    m = tmp_path / "s" / "manifest.jsonl"
    m.parent.mkdir()
    m.write_text(json.dumps({"audio_filepath": "nope.wav", "text": "x"}) + "\n")
    out = tmp_path / "run"
    assert main(["evaluate", "--manifest", str(m), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing_audio" in err and str(m) in err.splitlines()[0]
    assert not (out / "summary.json").exists()


def test_unknown_config_key_fails_before_work(tmp_path, capsys):
    assert main(["evaluate", "--manifest", "x.jsonl", "--out", str(tmp_path / "r"), "decoding.beams=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key 'decoding.beams'" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_synth_refuses_a_directory_holding_another_corpus(tmp_path):
    """A corpus directory is never overwritten by a corpus of other arguments (its audio files would be another
    corpus's under the same names, and runs reading its manifests would train on other audio): refused in one line
    naming the arguments, nothing touched; ``replace=True`` (the demo's own cache) re-synthesises."""
    from common.data.synth import CorpusMismatchError, SynthConfig, synthesize_corpus

    out = tmp_path / "corpus"
    small = SynthConfig(out_dir=str(out), en_sizes=[3, 1, 1], zh_sizes=[0, 0, 0], languages=["en"])
    synthesize_corpus(small, progress=False)
    before = {f: f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}
    other = SynthConfig(out_dir=str(out), en_sizes=[4, 1, 1], zh_sizes=[0, 0, 0], languages=["en"], seed=1)
    with pytest.raises(CorpusMismatchError, match=r"en_sizes, seed\)"):
        synthesize_corpus(other, progress=False)
    assert {f: f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()} == before
    synthesize_corpus(other, progress=False, replace=True)
    assert len((out / "en_train" / "manifest.jsonl").read_text().splitlines()) == 4
