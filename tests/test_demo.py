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
    assert sum("reused" in line for line in again) == 13  # every stage but the (cached) corpus


@pytest.mark.unit
def test_demo_parts_are_disjoint_by_id_and_text():
    """The demo's parts - Ark-Base's labelled part, TD's and OPD's audio-only parts, the teacher's own part, en_dev and
    en_test - never share an utterance id or a transcript (the teacher never trains on the students' data or the
    test), and the four pool parts are the whole pool; TD and OPD (and ASKD's pseudo-labels) read no transcript. From
    the corpus plan (texts, ids), without synthesising audio. en_ood (the out-of-domain set) shares no voice, voice
    variant, rate, pitch or content word with any other part."""
    from common.app.demo import CONFIGS, SPLITS
    from common.config import load
    from common.data.synth import SynthConfig, _plan

    plan = _plan(load(SynthConfig, CONFIGS / "synth.yaml", ["out_dir=/tmp/unused"]))
    pool = plan[("en", "train")]
    parts = {name: pool[rows] for name, rows, _ in SPLITS}
    parts["en_dev"], parts["en_test"] = plan[("en", "dev")], plan[("en", "test")]
    parts["en_ood"] = _plan(load(SynthConfig, CONFIGS / "synth_ood.yaml", ["out_dir=/tmp/unused"]))[("en", "test")]
    ids = [r["id"] for rows in parts.values() for r in rows]
    texts = [r["text"] for rows in parts.values() for r in rows]
    assert len(set(ids)) == len(ids) and len(set(texts)) == len(texts)
    assert sum(len(pool[rows]) for _, rows, _ in SPLITS) == len(pool)
    sizes = {k: len(v) for k, v in parts.items()}
    assert sizes == {
        "en_labelled": 400,
        "en_audio_td": 250,
        "en_audio_opd": 250,
        "en_teacher": 400,
        "en_dev": 100,
        "en_test": 300,
        "en_ood": 300,
    }
    assert [audio_only for _, _, audio_only in SPLITS] == [False, True, True, False]
    inside = [r for name, rows in parts.items() if name != "en_ood" for r in rows]

    def words(rows):
        return {w.strip(".?").lower() for r in rows for w in r["text"].split()}

    for key in ("voice", "rate", "pitch"):
        assert not {r[key] for r in inside} & {r[key] for r in parts["en_ood"]}, key
    assert {r["voice"].split("+")[1] for r in parts["en_ood"]}.isdisjoint(
        {r["voice"].split("+")[1] for r in inside if "+" in r["voice"]}
    )
    from common.data.synth import _EN, _EN_SHIFTED

    def lexicon(lex):
        return {w for values in lex.values() for v in values for w in v.split()} - {"the", "at", "on"}  # content words

    assert lexicon(_EN).isdisjoint(lexicon(_EN_SHIFTED))
    seen = words(inside)
    assert all(len(words([r]) - seen) >= 2 for r in parts["en_ood"])  # every sentence has >= 2 unseen words


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
