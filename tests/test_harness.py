"""Reproduction harness: result tables with bootstrap CIs, sweeps (local + SLURM dry run), corpus recipes, Shar."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.app.cli import main
from common.app.table import PAPERS, bootstrap_ci, build_table, run_row, to_latex, to_markdown
from common.runs import RunError

REPO = Path(__file__).resolve().parents[1]
PAPERS_MD = REPO.parent / "shared" / "docs" / "papers.md"


# -- tables ----------------------------------------------------------------------------------------
def _fake_eval_run(root: Path, sets: dict[str, list[tuple[int, int]]], lang: dict[str, str]) -> Path:
    """An evaluation run directory by hand: per set, (errors, reference units) per utterance."""
    summ = {"model": "hand", "sets": {}}
    for name, utts in sets.items():
        d = root / name
        d.mkdir(parents=True)
        with (d / "errs.jsonl").open("w") as f:
            for i, (e, n) in enumerate(utts):
                f.write(
                    json.dumps(
                        {"id": f"{name}-{i}", "language": lang[name], "sub": e, "del": 0, "ins": 0, "ref_units": n}
                    )
                    + "\n"
                )
        tot_e, tot_n = sum(e for e, _ in utts), sum(n for _, n in utts)
        summ["sets"][name] = {
            "error_rate": tot_e / tot_n,
            "metric": "CER" if lang[name] == "zh" else "WER",
            "n_utts": len(utts),
            "ref_units": tot_n,
        }
    (root / "summary.json").write_text(json.dumps(summ))
    return root


@pytest.mark.unit
def test_bootstrap_interval():
    rate, lo, hi = bootstrap_ci([0, 0, 0], [5, 5, 5])
    assert (rate, lo, hi) == (0.0, 0.0, 0.0)
    errs, refs = [1, 0, 3, 0, 2, 0, 0, 1] * 10, [10, 8, 12, 9, 10, 7, 11, 10] * 10
    rate, lo, hi = bootstrap_ci(errs, refs, n_boot=2000, seed=1)
    assert rate == pytest.approx(sum(errs) / sum(refs))
    assert lo < rate < hi and hi - lo < 0.05  # 80 utterances: a few points wide
    assert bootstrap_ci(errs, refs, n_boot=2000, seed=1) == (rate, lo, hi)  # seeded
    wide = bootstrap_ci(errs[:8], refs[:8], n_boot=2000, seed=1)
    assert wide[2] - wide[1] > hi - lo  # fewer utterances, wider interval
    with pytest.raises(ValueError):
        bootstrap_ci([1, 2], [3])


@pytest.mark.unit
def test_paired_bootstrap_difference():
    """a - b on the same utterances: the paired interval resolves a difference that two independent intervals
    (overlapping) cannot, is exactly 0 for identical systems, and matches a hand computation of the point value."""
    from common.app.table import paired_bootstrap_delta

    rng = np.random.default_rng(0)
    refs = rng.integers(5, 20, size=100)
    base = rng.binomial(refs, 0.3)
    better = np.maximum(base - rng.binomial(1, 0.5, size=100), 0)  # a, one error fewer on about half the utterances
    d, lo, hi = paired_bootstrap_delta(better, refs, base, refs, n_boot=2000, seed=0)
    assert d == pytest.approx(better.sum() / refs.sum() - base.sum() / refs.sum())
    assert lo < d < hi < 0  # a is significantly better
    _, a_lo, a_hi = bootstrap_ci(better, refs, 2000, 0)
    _, b_lo, b_hi = bootstrap_ci(base, refs, 2000, 0)
    assert a_hi > b_lo  # the unpaired intervals overlap: they would not have shown it
    assert paired_bootstrap_delta(base, refs, base, refs, 500, 0) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap_delta([1, 2], [3, 3], [1], [3])


@pytest.mark.unit
def test_compare_runs_matches_utterances_and_refuses_other_sets(tmp_path, capsys):
    from common.app.table import compare_runs

    a = _fake_eval_run(tmp_path / "a", {"en_test": [(0, 10)] * 30}, {"en_test": "en"})
    b = _fake_eval_run(tmp_path / "b", {"en_test": [(2, 10)] * 30}, {"en_test": "en"})
    (c,) = compare_runs(a, b)
    assert c.delta == pytest.approx(-20.0) and c.hi < 0 and c.verdict == "a better" and c.n_utts == 30
    assert main(["table", str(a), str(b), "--compare", str(a), str(b)]) == 0
    assert "| a | b | en_test (WER, 30 utts) | -20.00 |" in capsys.readouterr().out
    other = _fake_eval_run(tmp_path / "o", {"en_test": [(0, 10)] * 29}, {"en_test": "en"})
    with pytest.raises(RunError, match="different utterances"):
        compare_runs(a, other)


@pytest.mark.unit
def test_table_units_paper_columns_and_latex(tmp_path):
    run = _fake_eval_run(
        tmp_path / "ark_base_sft",
        {"aishell1_test": [(1, 20), (0, 30)], "librispeech_test_clean": [(2, 10), (0, 10)]},
        {"aishell1_test": "zh", "librispeech_test_clean": "en"},
    )
    row = run_row(run)
    assert row.cells["aishell1_test"].unit == "CER" and row.cells["librispeech_test_clean"].unit == "WER"
    assert row.cells["aishell1_test"].rate == pytest.approx(2.0) and row.cells[
        "librispeech_test_clean"
    ].rate == pytest.approx(10.0)
    table = build_table([row], "ark_table1")
    md = to_markdown(table)
    assert "AISHELL-1 CER %" in md and "LS test-clean WER %" in md
    line = next(line for line in md.splitlines() if line.startswith("| ark_base_sft"))
    assert "2.00 [" in line and "| 3.48 |" in line and "| 3.75 |" in line  # ours with CI, the paper beside it
    assert "Qwen3-ASR-1.7B (paper only)" in md
    tex = to_latex(table)
    assert r"\begin{tabular}" in tex and r"ark\_base\_sft" in tex and "3.48" in tex
    # through the CLI, markdown + LaTeX written
    assert (
        main(["table", str(run), "--paper", "ark_table1", "--out", str(tmp_path / "t.md"), "--bootstrap", "200"]) == 0
    )
    assert (tmp_path / "t.md").is_file() and (tmp_path / "t.tex").is_file()
    # a summary that disagrees with its own per-utterance errors is refused
    s = json.loads((run / "summary.json").read_text())
    s["sets"]["aishell1_test"]["error_rate"] = 0.5
    (run / "summary.json").write_text(json.dumps(s))
    assert main(["table", str(run)]) == 2


@pytest.mark.skipif(not PAPERS_MD.is_file(), reason=f"{PAPERS_MD} not found (the ../shared folder beside the repo)")
def test_paper_numbers_equal_papers_md():
    text = PAPERS_MD.read_text(encoding="utf-8")
    block = text[text.index("### 1.7 Table 1") :].split("\n\n")[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.match(r"^[\d.]+$", cells[1]):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    ours = {label: values for label, values in PAPERS["ark_table1"]["rows"].values()}
    assert ours == rows and len(rows) == 5
    m = re.search(r"LibriSpeech clean (\d+\.\d+) / other (\d+\.\d+), AMI (\d+\.\d+)", text.replace("\n", " "))
    assert PAPERS["askd"]["rows"]["askd"][1] == [float(x) for x in m.groups()]


def test_sweep_table_lists_unfinished_runs(tmp_path):
    from common.app.sweep import SweepConfig, expand, sweep_rows, write_index

    cfg = SweepConfig(
        base="x.yaml", out_dir=str(tmp_path), grid={"opd.top_k": [8, 16]}, runs=[{"opd.tau": 1.0}, {"opd.tau": 2.0}]
    )
    runs = expand(cfg)
    assert [r.name for r in runs] == ["top_k-8_tau-1.0", "top_k-8_tau-2.0", "top_k-16_tau-1.0", "top_k-16_tau-2.0"]
    assert runs[0].overrides[-1] == f"run_dir={tmp_path / 'top_k-8_tau-1.0'}"
    _fake_eval_run(Path(runs[0].run_dir), {"en_test": [(1, 10)]}, {"en_test": "en"})
    write_index(cfg, runs, {})
    rows = sweep_rows(tmp_path, n_boot=50)
    assert len(rows) == 4 and rows[0].extra == {"top_k": "8", "tau": "1.0"} and "not finished" in rows[1].name
    md = to_markdown(build_table(rows))
    assert md.count("\n| top_k-") == 4 and "| top_k | tau |" in md.replace("system | ", "")


# -- sweeps ----------------------------------------------------------------------------------------
def test_shipped_sweeps_expand_and_validate():
    from common.app.sweep import SweepConfig, expand, slurm_overrides, validate
    from common.config import load

    files = sorted((REPO / "configs" / "sweeps").rglob("*.yaml"))
    assert len(files) == 11
    for f in files:
        cfg = load(SweepConfig, f)
        runs = expand(cfg)
        assert len(runs) >= 3
        validate(cfg, runs, slurm_overrides(cfg) if "tiny" not in str(f) else [])


def test_sweep_refuses_a_bad_key_naming_the_run(tmp_path):
    from common.app.sweep import SweepConfig, expand, validate
    from common.config import ConfigError

    cfg = SweepConfig(
        base=str(REPO / "configs/askd_whisper/tiny/askd.yaml"),
        out_dir=str(tmp_path),
        grid={"curriculum.shedule": ["linear"]},
    )
    with pytest.raises(ConfigError, match="run shedule-linear.*curriculum.shedule"):
        validate(cfg, expand(cfg))


def test_slurm_dry_run_is_a_valid_array_submission(tmp_path, capsys):
    import submitit

    from common.app.sweep import SweepConfig, run_slurm, sbatch_script, slurm_parameters
    from common.config import load

    cfg = load(
        SweepConfig, REPO / "configs/sweeps/ark_opd_direction.yaml", [f"out_dir={tmp_path}", "slurm.partition=gpu"]
    )
    status = run_slurm(cfg, dry_run=True)
    assert list(status.values()) == ["would submit"] * 3
    script = sbatch_script(cfg, 3)
    for line in (
        "#SBATCH --array=0-2%3",
        "#SBATCH --nodes=3",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --signal=USR2@120",
        "srun",
    ):
        assert line in script, line
    out = capsys.readouterr().out
    assert "opd.direction=jsd" in out and "trainer.num_nodes=3" in out and "--resume" in out
    # the same parameters are accepted by submitit's executor (no SLURM needed to check them)
    ex = submitit.AutoExecutor(folder=tmp_path / "sub", cluster="debug")
    p = slurm_parameters(cfg)
    ex.update_parameters(
        timeout_min=p["time"],
        nodes=p["nodes"],
        tasks_per_node=p["ntasks_per_node"],
        gpus_per_node=p["gpus_per_node"],
        cpus_per_task=p["cpus_per_task"],
    )


def test_sweep_fields_that_reach_a_shell_are_validated_and_quoted(tmp_path, capsys):
    """A newline in a sweep name (it became an executed line of the sbatch script) or in a SLURM field is refused in
    one line; an out_dir with a ';' stays one quoted argument in the dry-run script, which is built as submitit builds
    the submitted one; printed commands are shell-quoted (shlex.split gives the arguments back)."""
    import json
    import shlex

    from common.app.sweep import SweepConfig, run_local, run_slurm, sbatch_script, submitit_folder
    from common.config import load

    base = REPO / "configs/sweeps/ark_opd_direction.yaml"
    for field, value, key in (
        ("name", "x\ntouch PWNED", "name"),
        ("slurm", {"partition": "gpu\nrm -rf ~"}, "slurm.partition"),
        ("out_dir", "runs/a\nb", "out_dir"),
    ):
        bad = tmp_path / f"bad_{key}.yaml"  # YAML keeps the newline (a command-line override would not)
        bad.write_text(f"_base_: {base}\n{field}: {json.dumps(value)}\n")
        with pytest.raises(ValueError) as err:
            load(SweepConfig, bad, [] if field == "out_dir" else [f"out_dir={tmp_path}"])
        assert key in str(err.value) and "\n" not in str(err.value), str(err.value)
    out_dir = tmp_path / "my sweep; touch PWNED"
    cfg = load(SweepConfig, base, [f"out_dir={out_dir}", "overrides=[optim.lr=1e-4, 'trainer.seed=1']"])
    script = sbatch_script(cfg, 3)
    cmd = [line for line in script.splitlines() if "submitit.core._submit" in line][0]
    words = shlex.split(cmd)
    assert str(submitit_folder(cfg)) in words and not any(w.startswith("touch") for w in words), cmd
    run_slurm(cfg, dry_run=True)
    printed = [line for line in capsys.readouterr().out.splitlines() if "--resume" in line]
    assert printed and all(shlex.split(line.split(": ", 1)[1])[-1] == "--resume" for line in printed)
    assert any(f"run_dir={out_dir}/" in w for w in shlex.split(printed[0].split(": ", 1)[1]))
    run_local(cfg, dry_run=True)
    would = [line for line in capsys.readouterr().out.splitlines() if "would run" in line]
    assert would and any(f"run_dir={out_dir}/" in w for w in shlex.split(would[0].split("would run: ", 1)[1]))


def test_tiny_sweep_runs_locally_and_relaunch_skips(tiny_corpus, tmp_path):
    """Two tiny ASKD runs through `asr-distill sweep`; the ablation table lists both; a re-launch runs nothing."""
    sweep = tmp_path / "sweep.yaml"
    out = tmp_path / "runs"
    sweep.write_text(f"""
name: tiny_test
base: {REPO / "configs/askd_whisper/tiny/askd.yaml"}
out_dir: {out}
grid: {{self_kd.self_teacher: [snapshot, ema]}}
overrides: [trainer.max_steps=2, trainer.val_every_n_steps=2, trainer.progress_bar=false, student.n_decoder_layers=1,
  data.max_cuts=4, "data.train=[{tiny_corpus / "en_train/manifest.jsonl"}]", "data.dev=[]",
  "data.test=[{tiny_corpus / "en_test/manifest.jsonl"}]", decoding.max_new_tokens=16]
""")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "common.app.cli", "sweep", str(sweep)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    index = json.loads((out / "sweep.json").read_text())
    assert [x["status"] for x in index["runs"]] == ["done", "done"]
    again = subprocess.run(
        [sys.executable, "-m", "common.app.cli", "sweep", str(sweep)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and again.stdout.count("finished, skipped") == 2
    assert main(["table", "--sweep", str(out), "--bootstrap", "100"]) == 0
    from common.app.sweep import sweep_rows

    rows = sweep_rows(out, n_boot=100)
    assert [r.extra["self_teacher"] for r in rows] == ["snapshot", "ema"] and all("en_test" in r.cells for r in rows)


# -- corpus recipes and Shar -----------------------------------------------------------------------
def _tone(path: Path, seconds: float, f: float = 220.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    x = (0.2 * np.sin(2 * np.pi * f * t)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, 16000, subtype="PCM_16")
    return x


def _fake_librispeech(root: Path) -> Path:
    corpus = root / "LibriSpeech"
    for part in ("test-clean", "dev-clean"):
        d = corpus / part / "1089" / "134686"
        lines = []
        for i in range(2):
            uid = f"1089-134686-{i:04d}"
            _tone(d / f"{uid}.flac", 1.0 + i, 200 + 50 * i)
            lines.append(f"{uid} HELLO WORLD NUMBER {i}")
        (d / "1089-134686.trans.txt").write_text("\n".join(lines) + "\n")
    return corpus


def _fake_aishell(root: Path) -> Path:
    """data_aishell with train/dev/test (Lhotse's recipe wants every part): 1, 1 and 2 utterances."""
    tr = root / "data_aishell" / "transcript"
    tr.mkdir(parents=True)
    texts = {
        "BAC009S0764W0121": "甚至 出现 交易 几乎 停滞 的 情况",
        "BAC009S0764W0122": "一二线 城市 虽然 也 处于 调整 中",
        "BAC009S0002W0122": "而 对 楼市 成交 抑制 作用 最 大 的 限 购",
        "BAC009S0724W0121": "广州 市 房地产 中介 协会 分析",
    }
    parts = {
        "BAC009S0764W0121": "test",
        "BAC009S0764W0122": "test",
        "BAC009S0002W0122": "train",
        "BAC009S0724W0121": "dev",
    }
    for i, (uid, part) in enumerate(parts.items()):
        _tone(root / "data_aishell" / "wav" / part / uid[6:11] / f"{uid}.wav", 1.5, 300 + 40 * i)
    (tr / "aishell_transcript_v0.8.txt").write_text("".join(f"{k} {v}\n" for k, v in texts.items()), encoding="utf-8")
    return root


def _fake_wenetspeech(root: Path) -> Path:
    _tone(root / "audio" / "test_net" / "Y0000000000_a.wav", 6.0)
    meta = {
        "audios": [
            {
                "aid": "Y0000000000_a",
                "path": "audio/test_net/Y0000000000_a.wav",
                "duration": 6.0,
                "segments": [
                    {
                        "sid": "Y0000000000_a_S00000",
                        "begin_time": 0.5,
                        "end_time": 2.5,
                        "text": "今天天气很好",
                        "subsets": ["TEST_NET"],
                    },
                    {
                        "sid": "Y0000000000_a_S00001",
                        "begin_time": 3.0,
                        "end_time": 5.5,
                        "text": "我们去公园",
                        "subsets": ["TEST_NET"],
                    },
                ],
            }
        ]
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "WenetSpeech.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    "corpus, make, sets, lang",
    [
        ("librispeech", _fake_librispeech, {"librispeech_test_clean", "librispeech_dev_clean"}, "en"),
        ("aishell1", _fake_aishell, {"aishell1_test"}, "zh"),
        ("wenetspeech", _fake_wenetspeech, {"wenetspeech_test_net"}, "zh"),
    ],
)
def test_prepare_recipes_on_fake_corpora(tmp_path, corpus, make, sets, lang):
    from common.data.manifests import load_manifest, set_name

    src = make(tmp_path / "corpus")
    out = tmp_path / "prepared"
    parts = ["--parts", "TEST_NET"] if corpus == "wenetspeech" else []
    assert main(["data", "prepare", corpus, "--corpus-dir", str(src), "--out", str(out), *parts]) == 0
    found = {p.parent.name for p in out.glob("*/cuts.jsonl.gz")}
    assert sets <= found
    for name in sets:
        cuts, report = load_manifest(out / name / "cuts.jsonl.gz")  # validated like any manifest
        assert set_name(out / name / "cuts.jsonl.gz") == name and report.n_bad == 0 and len(cuts) == 2
        assert {c.supervisions[0].language for c in cuts} == {lang}
    if corpus == "wenetspeech":  # long recordings are trimmed to their segments
        cuts, _ = load_manifest(out / "wenetspeech_test_net" / "cuts.jsonl.gz")
        assert sorted(round(c.duration, 2) for c in cuts) == [2.0, 2.5]


def test_shar_export_reads_back_the_same_audio(tmp_path):
    from common.data.datamodule import cut_audio
    from common.data.manifests import load_manifest

    src = _fake_aishell(tmp_path / "corpus")
    out = tmp_path / "prepared"
    assert (
        main(
            [
                "data",
                "prepare",
                "aishell1",
                "--corpus-dir",
                str(src),
                "--out",
                str(out),
                "--shar",
                "--shar-shard-size",
                "1",
            ]
        )
        == 0
    )
    shar = out / "aishell1_test" / "shar"
    assert len(list(shar.glob("recording.*.tar"))) == 2
    files, _ = load_manifest(out / "aishell1_test" / "cuts.jsonl.gz")
    shards, report = load_manifest(f"shar:{shar}")
    assert report.n_bad == 0 and sorted(shards.ids) == sorted(files.ids)
    by_id = {c.id: c for c in files}
    for cut in shards:
        assert cut.supervisions[0].text == by_id[cut.id].supervisions[0].text
        np.testing.assert_allclose(cut_audio(cut), cut_audio(by_id[cut.id]), atol=1e-4)
    assert (
        main(["data", "prepare", "ami", "--corpus-dir", str(src), "--out", str(out)]) == 2
    )  # AMI needs its annotations


@pytest.mark.unit
def test_demo_results_json_shape(tmp_path):
    """results.json as scripts read it: rows per (method, system, set) with CIs, paired comparisons with intervals,
    the names the issue fixed (en_test; teacher, Ark-Base ..., CE only ...)."""
    from common.app.demo import PAIRS, SYSTEMS, demo_results

    rng = np.random.default_rng(0)
    teacher = _fake_eval_run(tmp_path / "teacher", {"en_test": [(0, 10)] * 40}, {"en_test": "en"})
    for systems in SYSTEMS.values():
        for i, run in enumerate(systems):
            errs = rng.binomial(10, 0.1 + 0.1 * i, size=40)
            _fake_eval_run(tmp_path / run, {"en_test": [(int(e), 10) for e in errs]}, {"en_test": "en"})
    res = demo_results(tmp_path, teacher, {"stage": 1.0})
    assert set(res) >= {"rows", "comparisons", "diagnostics", "timings", "environment"}
    assert {(r["method"], r["system"]) for r in res["rows"]} == {
        (m, s) for m, systems in SYSTEMS.items() for s in ["teacher", *systems.values()]
    }
    row = next(r for r in res["rows"] if r["system"] == "Ark-Base")
    assert row["set"] == "en_test" and row["ci"][0] <= row["error_rate"] <= row["ci"][1]
    assert len(res["comparisons"]) == len(PAIRS)
    c = next(c for c in res["comparisons"] if (c["a"], c["b"]) == ("Ark-Base", "teacher"))
    assert c["delta"] > 0 and c["ci"][0] > 0 and c["verdict"] == "teacher better"  # 10 % vs 0 % on 40 utterances
    json.dumps(res)  # serialisable as is


@pytest.mark.unit
def test_demo_seed_spread_and_conclusions_that_hold_in_every_seed(tmp_path):
    """--seeds N: each system's per-seed rates, mean and range; a paired conclusion holds in every seed only when every
    seed's interval excludes zero the same way."""
    from common.app.demo import PAIRS, SYSTEMS, _comparisons_md, demo_results, seed_dir

    teacher = _fake_eval_run(tmp_path / "teacher", {"en_test": [(0, 10)] * 60}, {"en_test": "en"})
    for seed in range(2):
        rng = np.random.default_rng(seed)
        for systems in SYSTEMS.values():
            for run in systems:
                p = 0.3 if run == "ark_base_sft" else 0.1  # Ark-Base clearly worse than the rest in both seeds
                errs = rng.binomial(10, p, size=60)
                _fake_eval_run(
                    seed_dir(tmp_path, run, seed), {"en_test": [(int(e), 10) for e in errs]}, {"en_test": "en"}
                )
    res = demo_results(tmp_path, teacher, {}, seeds=2)
    base = next(r for r in res["seed_spread"] if r["system"] == "Ark-Base")
    assert len(base["per_seed"]) == 2 and base["range"][0] <= base["mean"] <= base["range"][1]
    opd = next(c for c in res["seed_conclusions"] if (c["a"], c["b"]) == ("Ark-Base + OPD", "Ark-Base"))
    assert opd["holds_in_every_seed"] and opd["verdict_per_seed"] == ["Ark-Base + OPD better"] * 2
    flat = next(
        c for c in res["seed_conclusions"] if (c["a"], c["b"]) == ("Ark-Base + OPD", "Ark-Base + self-training")
    )
    assert not flat["holds_in_every_seed"] or len(set(flat["verdict_per_seed"])) == 1
    assert len(res["seed_conclusions"]) == len(PAIRS) and "hold in every seed" in _comparisons_md(res)
    # the controls' share of OPD's gain, per seed: both sit at p = 0.1 like OPD, so each recovers about all of it
    shares = res["control_shares"]["Ark-Base + self-training"]["en_test"]
    assert len(shares) == 2 and all(0.5 < s < 1.5 for s in shares)


@pytest.mark.unit
def test_demo_records_the_dev_sweep_behind_its_opd_learning_rate(tmp_path, monkeypatch):
    """results.json's ``selection``: the lr the OPD run trained with (its saved config), each dev-sweep point's en_dev
    error rate, the point the sweep selects and whether the demo uses it; unfinished points are listed, not chosen."""
    from common.app.demo import opd_selection

    out = tmp_path / "runs" / "demo"
    (out / "ark_base_opd").mkdir(parents=True)
    (out / "ark_base_opd" / "config.yaml").write_text("optim: {lr: 0.0003}\n")
    monkeypatch.chdir(tmp_path / "runs")  # the sweep's out_dir (runs/sweeps/demo_opd) is not under this cwd
    assert opd_selection(out)["points"] == [] and opd_selection(out)["opd_lr"] == 3e-4
    sweep = tmp_path / "runs" / "sweeps" / "demo_opd"
    runs = []
    for lr, wrong in ((1e-4, 5), (3e-4, 2), (1e-3, None)):
        name = f"lr={lr:g}"
        if wrong is not None:  # 1e-3: not finished
            _fake_eval_run(sweep / name, {"en_dev": [(wrong, 10)] * 20}, {"en_dev": "en"})
        runs.append({"name": name, "run_dir": f"runs/sweeps/demo_opd/{name}", "values": {"optim.lr": lr}})
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "sweep.json").write_text(json.dumps({"runs": runs}))
    sel = opd_selection(out)
    assert [p["lr"] for p in sel["points"]] == [1e-4, 3e-4, 1e-3]
    assert [p["dev_error_rate"] for p in sel["points"]] == [50.0, 20.0, None]
    assert sel["dev_best_lr"] == 3e-4 and sel["uses_dev_best"] and not sel["complete"]
    assert sel["selected_on"] == "en_dev"
    from common.app.demo import _comparisons_md

    md = _comparisons_md({"comparisons": [], "diagnostics": {"opd_from_base": {}, "opd_from_td": {}}, "selection": sel})
    assert "OPD learning rate 0.0003, chosen on en_dev" in md and "0.001 -> not finished" in md
    assert "the dev sweep's best. The sweep is not finished." in md
