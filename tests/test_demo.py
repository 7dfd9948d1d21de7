"""The demo's pieces, and `make demo` end to end (slow: about 25 minutes on 2 CPU cores; `make test-slow`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_end_to_end_then_reuses_every_stage(tmp_path):
    from common.app.demo import run_demo

    lines: list[str] = []
    md = run_demo(tmp_path / "out", corpus_dir=tmp_path / "corpus", log=lines.append)
    for row in (
        "teacher: tiny.en adapted",
        "student, CE only",
        "student, Distil-Whisper-style",
        "student, ASKD",
        "Ark-Base (SFT)",
        "Ark-Base + OPD",
        "Ark-Base + TD",
        "Ark-Base + TD + OPD",
    ):
        assert re.search(rf"\| {re.escape(row)} \|.*\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \|", md), row
    assert (tmp_path / "out" / "results.tex").is_file()
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    systems = {(r["method"], r["system"], r["set"]) for r in res["rows"]}
    for m, names in (
        ("ark_asr", ("Ark-Base", "Ark-Base + TD", "Ark-Base + OPD", "Ark-Base + TD + OPD")),
        ("askd_whisper", ("CE only", "Distil-Whisper-style", "ASKD")),
    ):
        assert {(m, n, "en_test") for n in ("teacher", *names)} <= systems
    assert ("askd_whisper", "ASKD", "real_en") in systems and ("askd_whisper", "teacher", "real_en") in systems
    assert {(c["a"], c["b"]) for c in res["comparisons"]} >= {("Ark-Base + OPD", "Ark-Base"), ("ASKD", "CE only")}
    assert res["diagnostics"]["opd_from_base"]["vuss_mean"] > 0 and res["diagnostics"]["opd_from_td"]["vuss_mean"] > 0
    again: list[str] = []
    assert run_demo(tmp_path / "out", corpus_dir=tmp_path / "corpus", log=again.append) == md
    assert sum("reused" in line for line in again) == 11  # every stage but the (cached) corpus


def test_demo_splits_are_disjoint_and_cover_the_pool():
    """Ark-Base's labelled part, TD's and OPD's audio-only parts never share an utterance, and together they are the
    synthetic training pool; TD and OPD (and ASKD's pseudo-labels) read no transcript."""
    import yaml

    from common.app.demo import CONFIGS, SPLITS

    n_pool = yaml.safe_load((CONFIGS / "synth.yaml").read_text())["en_sizes"][0]
    seen: set[int] = set()
    for _, rows, _ in SPLITS:
        idx = set(range(n_pool)[rows])
        assert idx and not idx & seen
        seen |= idx
    assert seen == set(range(n_pool))
    assert [audio_only for _, _, audio_only in SPLITS] == [False, True, True]
    n_labelled = len(range(n_pool)[SPLITS[0][1]])
    assert n_labelled < n_pool - n_labelled  # the unlabelled part is the larger one


def test_subset_manifest_is_absolute_and_audio_only_drops_text(real_speech, tmp_path):
    from common.data.manifests import load_manifest, write_jsonl_subset

    src = real_speech / "manifest.jsonl"
    en = write_jsonl_subset(src, tmp_path / "real_en" / "manifest.jsonl", language="en")
    rows = [json.loads(line) for line in en.read_text().splitlines()]
    assert len(rows) == 40 and all(r["language"] == "en" and Path(r["audio_filepath"]).is_file() for r in rows)
    part = write_jsonl_subset(en, tmp_path / "part" / "manifest.jsonl", rows=slice(5, 10), audio_only=True)
    sub = [json.loads(line) for line in part.read_text().splitlines()]
    assert [r["audio_filepath"] for r in sub] == [r["audio_filepath"] for r in rows[5:10]]
    assert all("text" not in r for r in sub)
    cuts, report = load_manifest(str(part), audio_only=True)
    assert len(cuts) == 5 and all(c.supervisions[0].text == "" for c in cuts)
    with pytest.raises(Exception, match="text"):  # without audio_only, a row without a transcript is refused
        load_manifest(str(part))


def test_askd_audio_only_training_needs_pseudo_labels_without_a_wer_filter():
    from askd_whisper.config import AskdConfig
    from common.config import from_dict

    base = {"run_dir": "/tmp/unused", "data": {"train": ["x.jsonl"], "train_audio_only": True}}
    with pytest.raises(ValueError, match="needs labels=pseudo"):
        from_dict(AskdConfig, base)
    with pytest.raises(ValueError, match="no references to filter"):
        from_dict(AskdConfig, {**base, "labels": "pseudo", "teacher_cache": "c"})
    cfg = from_dict(AskdConfig, {**base, "labels": "pseudo", "teacher_cache": "c", "pseudo_label_max_wer": None})
    assert cfg.data.train_audio_only
