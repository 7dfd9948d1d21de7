"""Nothing lost, nothing silent: each case here failed (lost data, a silent wrong result or a traceback) before."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import SignalAt, ark_model_cfg, sft_cfg

from common.app.cli import main

REPO = Path(__file__).resolve().parents[1]


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_ctrl_c_during_fit_checkpoints_and_resumes_exactly(tiny_corpus, tmp_path):
    """SIGINT during step 3 of 6: the step finishes, last.ckpt is written, fit stops with Preempted (CLI exit 130);
    --resume ends at the same weights as an uninterrupted run, and no last-v1.ckpt appears."""
    from ark_asr.run import fit
    from common.training import Preempted

    fit(sft_cfg(tiny_corpus, tmp_path / "full"))
    with pytest.raises(Preempted) as info:
        fit(sft_cfg(tiny_corpus, tmp_path / "int"), callbacks=[SignalAt(2, signal.SIGINT)])
    assert info.value.signum == signal.SIGINT and info.value.code == 130
    # the signal arrives after step 2's hooks have checked for one: step 3 runs to its end, then last.ckpt
    assert _weights(tmp_path / "int")["global_step"] == 3
    assert fit(sft_cfg(tiny_corpus, tmp_path / "int"), resume=True)["steps"] == 6
    a, b = _weights(tmp_path / "full")["state_dict"], _weights(tmp_path / "int")["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    assert sorted(p.name for p in (tmp_path / "int" / "checkpoints").iterdir()) == ["last.ckpt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored after training


def test_last_checkpoint_is_written_periodically_by_default(tiny_corpus, tmp_path):
    """Behaviour, not Lightning's fields: with a short interval, last.ckpt appears and is rewritten while training runs
    (never as last-v1.ckpt), without any ckpt_every_n_steps; the default interval is 30 minutes."""
    import time

    import lightning as L

    from ark_asr.run import fit
    from common.training import TrainerConfig

    assert TrainerConfig().last_ckpt_every_minutes == 30.0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    seen: list[float] = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            time.sleep(0.3)  # longer than the interval below
            if ckpt.exists() and trainer.global_step < trainer.max_steps:
                seen.append(ckpt.stat().st_mtime_ns)

    cfg = sft_cfg(tiny_corpus, tmp_path / "run", max_steps=6, last_ckpt_every_minutes=0.002, ckpt_every_n_steps=None)
    fit(cfg, callbacks=[Watch()])
    assert len(set(seen)) >= 2, seen  # written mid-run, then rewritten
    assert sorted(p.name for p in ckpt.parent.glob("last*.ckpt")) == ["last.ckpt"]


_FULL_DISK_PROBE = """
import json, sys, torch
from pathlib import Path
from common.training.preemption import AtomicCheckpointIO, CheckpointError
target = Path(sys.argv[1]) / "checkpoints" / "last.ckpt"
io = AtomicCheckpointIO()
io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
good = target.read_bytes()
try:
    io.save_checkpoint({"step": 2, "w": torch.zeros(2**20)}, target)  # 4 MB on a 1 MB file system
    err = None
except CheckpointError as e:
    err = str(e)
files = sorted(p.name for p in target.parent.iterdir())
print(json.dumps({"err": err, "kept": target.read_bytes() == good, "files": files}))
"""


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_one(tmp_path):
    """A real full file system (a 1 MB tmpfs in a private mount namespace): torch.save raises a RuntimeError chained
    from ENOSPC, which is one line naming the file and the reason; the previous last.ckpt survives, no temp file."""
    import json
    import shutil
    import subprocess
    import sys

    fs = tmp_path / "fs"
    fs.mkdir()
    probe = tmp_path / "probe.py"
    probe.write_text(_FULL_DISK_PROBE)
    cmd = f"mount -t tmpfs -o size=1m tmpfs '{fs}' && '{sys.executable}' '{probe}' '{fs}'"
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a private small file system here")
    out = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0 and "mount" in out.stderr.lower() and not out.stdout:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["err"] and "last.ckpt" in res["err"] and "No space left on device" in res["err"], res
    assert "\n" not in res["err"] and res["kept"] and res["files"] == ["last.ckpt"], res


class _Payload:
    """Unpickling this runs a shell command (what a malicious last.ckpt carries)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_a_checkpoint_carrying_a_pickle_payload_is_refused_never_run(tiny_corpus, tmp_path, capsys):
    """export and --resume read checkpoints with weights_only=True: a last.ckpt whose unpickling would run a command is
    one line naming the file, and the command never runs (it did: export reported success)."""
    marker = tmp_path / "payload_ran"
    for method in ("askd_whisper", "ark_asr"):
        run = tmp_path / method
        (run / "checkpoints").mkdir(parents=True)
        torch.save({"state_dict": {}, "askd": _Payload(marker)}, run / "checkpoints" / "last.ckpt")
        (run / "config.yaml").write_text(f"method: {method}\n")
    ckpt = tmp_path / "askd_whisper" / "checkpoints" / "last.ckpt"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "refused" in err and str(ckpt) in err and "\n" not in err and not marker.exists()
    cfg = sft_cfg(tiny_corpus, tmp_path / "ark_asr")
    from ark_asr.run import fit
    from common.training.preemption import CheckpointError

    (tmp_path / "ark_asr" / "config.yaml").unlink()  # resume of a run whose only checkpoint is the payload
    with pytest.raises(CheckpointError, match="refused"):
        fit(cfg, resume=True)
    assert not marker.exists()


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from common.io import run_dir_lock
with run_dir_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_two_jobs_never_share_a_run_directory(tiny_corpus, tmp_path):
    """A second fit on a run directory that a live process holds is refused in one line naming the holder (host,
    pid), before it touches anything (it used to remove the first job's checkpoint temp file, so the first job's final
    write failed); once the holder dies (kill -9: the kernel drops its flock) the next job runs, and a resume waits
    for the lock up to trainer.lock_wait_seconds."""
    import subprocess

    from ark_asr.run import fit
    from common.io import RunDirLockedError

    run = tmp_path / "run"
    tmp = run / "checkpoints" / ".last.ckpt.abc.tmp"  # the first job's checkpoint being written
    tmp.parent.mkdir(parents=True)
    tmp.write_bytes(b"partial")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for resume in (False, True):
            cfg = sft_cfg(tiny_corpus, run, lock_wait_seconds=1.0)
            with pytest.raises(RunDirLockedError) as err:
                fit(cfg, resume=resume)
            msg = str(err.value)
            assert f"pid {holder.pid} on host" in msg and str(run) in msg and "\n" not in msg
        assert tmp.read_bytes() == b"partial" and not (run / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    summary = fit(sft_cfg(tiny_corpus, run, max_steps=1), resume=True)  # the dead holder's lock is free
    assert summary["steps"] == 1 and not tmp.exists()  # stale temp files removed, now under the lock


def test_resume_refuses_a_truncated_checkpoint_in_one_line(tiny_corpus, tmp_path, capsys):
    from ark_asr.run import fit

    fit(sft_cfg(tiny_corpus, tmp_path / "run", max_steps=2))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (tmp_path / "run" / "summary.json").unlink()
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # what a full disk used to leave
    cfg_path = tmp_path / "sft.yaml"
    from common.config import save_yaml

    save_yaml(sft_cfg(tiny_corpus, tmp_path / "run", max_steps=2), cfg_path)
    capsys.readouterr()  # the first fit's output
    assert main(["fit", "-c", str(cfg_path), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.ckpt is truncated or corrupt" in err[0]


def test_results_respect_the_umask(tmp_path):
    """summary.json, config.yaml, hyp.txt ... are written by the atomic writer: mode 0666 minus the umask, not 0600."""
    from common.io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "summary.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644


def test_weights_and_cache_shards_respect_the_umask(tiny_corpus, tmp_path, whisper_tiny):
    """Every weight and cache file a run writes, stat'ed for real under umask 022: a saved Ark student, a teacher
    cache shard, an ASKD export and the converted bundled Whisper (safetensors wrote 0600, mkdtemp 0700)."""
    import stat

    from ark_asr.model import build_student
    from common.teachers.cache import CacheConfig, build_cache
    from common.teachers.whisper_teacher import WhisperTeacher
    from common.whisper import convert_bundled

    old = os.umask(0o022)
    try:
        student_dir = build_student(ark_model_cfg()).save_pretrained(tmp_path / "student")
        cache = tmp_path / "cache"
        build_cache(
            CacheConfig(
                manifest=str(tiny_corpus / "en_test" / "manifest.jsonl"),
                out_dir=str(cache),
                top_k=4,
                shard_size=8,
                batch_size=8,
                max_new_tokens=8,
            ),
            teacher=WhisperTeacher(*whisper_tiny),
            progress=False,
        )
        bundled = convert_bundled("tiny.en", out_dir=tmp_path / "bundled")
    finally:
        os.umask(old)
    written = [student_dir, *student_dir.iterdir(), *cache.glob("shard-*.safetensors"), bundled, *bundled.iterdir()]
    assert any(p.name == "model.safetensors" for p in written) and any(p.name.startswith("shard-") for p in written)
    for p in written:
        want = 0o755 if p.is_dir() else 0o644
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


def test_audio_that_fails_to_decode_mid_training_is_counted_once(tiny_corpus, tmp_path):
    """A WAV whose header is fine but whose samples are NaN, in the training set under bad_sample_policy: skip: the
    fit summary counts it once (it was missing from data_skipped) and TensorBoard's running total reads 1 from the
    skip on, never more (it showed 1.0 at every step as if each step skipped one)."""
    import numpy as np
    import soundfile as sf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ark_asr.run import fit

    rows = [json.loads(l) for l in (tiny_corpus / "en_train" / "manifest.jsonl").read_text().splitlines()][:6]
    for r in rows:
        r["audio_filepath"] = str(tiny_corpus / "en_train" / r["audio_filepath"])
    nan = tmp_path / "data" / "nan.wav"
    nan.parent.mkdir()
    sf.write(nan, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    rows.append({"audio_filepath": str(nan), "text": "not a number", "language": "en"})
    manifest = tmp_path / "data" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = sft_cfg(tiny_corpus, tmp_path / "run", max_steps=8)
    cfg.data.train, cfg.data.bad_sample_policy = [str(manifest)], "skip"
    summary = fit(cfg)
    assert summary["data_skipped"]["train_undecodable"] == 1, summary["data_skipped"]
    ev = EventAccumulator(str(next((tmp_path / "run" / "tb").rglob("events.out.tfevents.*")).parent))
    ev.Reload()
    values = [e.value for e in ev.Scalars("train/skipped_utterances_total")]
    assert values and max(values) == 1.0 and values == sorted(values), values


def test_utterance_ids_from_absolute_paths_are_clean(tmp_path, real_speech):
    from common.data.manifests import load_manifest

    rows = [json.loads(line) for line in (real_speech / "manifest.jsonl").read_text().splitlines()][:2]
    inside = tmp_path / "set_a"
    inside.mkdir()
    local = inside / ("clip" + Path(rows[0]["audio_filepath"]).suffix)
    shutil.copy(real_speech / rows[0]["audio_filepath"], local)
    out = [
        {**rows[0], "audio_filepath": str(local)},  # absolute, inside the manifest's folder
        {**rows[1], "audio_filepath": str(real_speech / rows[1]["audio_filepath"])},  # absolute, elsewhere
    ]
    (inside / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    ids = [c.id for c in load_manifest(str(inside / "manifest.jsonl"))[0]]
    assert ids[0] == "set_a/clip"
    elsewhere = Path(rows[1]["audio_filepath"])
    assert ids[1] == f"set_a/{elsewhere.parent.name}/{elsewhere.stem}"
    assert all("//" not in i and str(tmp_path) not in i for i in ids)


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_evaluate_a_missing_model_is_one_line_and_leaves_nothing(tmp_path, capsys, english_manifest, kind):
    model = tmp_path / "model"
    if kind == "empty":
        model.mkdir()
    out = tmp_path / "ev"
    rc = main(["evaluate", "--model", str(model), "--manifest", str(english_manifest), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(model) in err[0]
    assert not out.exists()  # a plain rerun with the right model works without --overwrite


def test_ctrl_c_during_evaluate_is_one_line(monkeypatch, capsys, english_manifest, tmp_path):
    import common.evaluate

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(common.evaluate, "run_evaluation", interrupted)
    rc = main(
        ["evaluate", "--model", "bundled:tiny.en", "--manifest", str(english_manifest), "--out", str(tmp_path / "e")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and len(err) == 1 and "interrupted" in err[0]


def test_export_refuses_an_existing_out_and_explains_ark(tmp_path, capsys):
    for method in ("askd_whisper", "ark_asr"):
        run = tmp_path / method
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        (run / "config.yaml").write_text(f"method: {method}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert (
        main(["export", "--ckpt", str(tmp_path / "askd_whisper" / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 2
    )
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert main(["export", "--ckpt", str(tmp_path / "ark_asr" / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 2
    assert "need no export" in capsys.readouterr().err


def test_long_audio_is_skipped_and_counted_not_cut(tmp_path, real_speech, capsys):
    """A 35 s clip against Whisper's 30 s window: not silently cut (it lost 47 of 124 words before) but skipped,
    listed and counted in the summary and the table."""
    import numpy as np
    import soundfile as sf

    from common.audio import load_audio

    rows = [json.loads(line) for line in (real_speech / "manifest.jsonl").read_text().splitlines()]
    en = [r for r in rows if r["language"] == "en"][:12]
    waves = [load_audio(real_speech / r["audio_filepath"]) for r in en]
    long_wave = np.concatenate(waves)
    while len(long_wave) < 35 * 16000:
        long_wave = np.concatenate([long_wave, waves[0]])
    d = tmp_path / "long_set"
    d.mkdir()
    sf.write(d / "long.wav", long_wave[: 35 * 16000], 16000)
    shutil.copy(real_speech / en[0]["audio_filepath"], d / ("short" + Path(en[0]["audio_filepath"]).suffix))
    man = [
        {"audio_filepath": "long.wav", "text": " ".join(r["text"] for r in en), "language": "en"},
        {"audio_filepath": "short" + Path(en[0]["audio_filepath"]).suffix, "text": en[0]["text"], "language": "en"},
    ]
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in man))
    out = tmp_path / "ev"
    assert (
        main(["evaluate", "--model", "bundled:tiny.en", "--manifest", str(d / "manifest.jsonl"), "--out", str(out)])
        == 0
    )
    res = json.loads((out / "summary.json").read_text())["sets"]["long_set"]
    assert res["n_utts"] == 1 and res["n_too_long"] == 1 and res["n_skipped"] == 1
    assert "longer than the model's 30 s window" in (out / "long_set" / "skipped.tsv").read_text()
    assert "| 1 (0 / 0 / 1) |" in (out / "table.md").read_text()


def test_fit_counts_what_the_data_left_out(tiny_corpus, tmp_path):
    from ark_asr.run import fit

    rows = [json.loads(line) for line in (tiny_corpus / "en_train" / "manifest.jsonl").read_text().splitlines()]
    d = tmp_path / "train_set"
    d.mkdir()
    for r in rows:
        r["audio_filepath"] = str((tiny_corpus / "en_train" / r["audio_filepath"]).resolve())
    rows.append({**rows[0], "audio_filepath": str(tmp_path / "missing.wav"), "id": "gone"})
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = sft_cfg(tiny_corpus, tmp_path / "run", max_steps=1)
    cfg.data.train, cfg.data.bad_sample_policy = [str(d / "manifest.jsonl")], "skip"
    summary = fit(cfg)
    assert summary["data_skipped"]["invalid_rows"] == {str(d / "manifest.jsonl"): 1}
    assert "train_outside_duration" in summary["data_skipped"]


def test_table_splits_sets_that_share_a_name_and_notes_skipped_utterances(tmp_path):
    from common.app.table import build_table, run_row, to_markdown

    def run(root, digest, skipped):
        root.mkdir()
        (root / "test").mkdir()
        (root / "test" / "errs.jsonl").write_text(
            "".join(json.dumps({"id": f"u{i}", "sub": 1, "del": 0, "ins": 0, "ref_units": 10}) + "\n" for i in range(5))
        )
        summ = {
            "error_rate": 0.1,
            "metric": "WER",
            "n_skipped": skipped,
            "n_invalid_rows": 0,
            "manifest_digest": digest,
        }
        (root / "summary.json").write_text(json.dumps({"sets": {"test": summ}}))
        return root

    a = run(tmp_path / "a", "aaaaaa111111", 0)
    b = run(tmp_path / "b", "bbbbbb222222", 2)
    md = to_markdown(build_table([run_row(a), run_row(b)]))
    assert "test@aaaaaa" in md and "test@bbbbbb" in md and "different manifests" in md
    assert "b: test@bbbbbb (2 skipped)" in md


def test_resume_with_a_changed_config(tiny_corpus, tmp_path):
    """A longer max_steps continues a finished run (its summary kept); a changed lr or architecture is refused in one
    line naming the keys, before anything is built; config.yaml keeps the values the run started with."""
    import yaml

    from ark_asr.run import fit
    from common.config import ConfigError

    run = tmp_path / "run"
    assert fit(sft_cfg(tiny_corpus, run, max_steps=2))["steps"] == 2
    longer = fit(sft_cfg(tiny_corpus, run, max_steps=4), resume=True)
    assert longer["steps"] == 4 and not longer.get("stopped_early")
    assert json.loads((run / "summary.step0000002.json").read_text())["steps"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 2
    assert yaml.safe_load((run / "config.resume-1.yaml").read_text())["trainer"]["max_steps"] == 4
    lr = sft_cfg(tiny_corpus, run, max_steps=6)
    lr.optim.lr = 5e-4
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.001 -> 0\.0005") as err:
        fit(lr, resume=True)
    assert "\n" not in str(err.value)
    wide = sft_cfg(tiny_corpus, run, max_steps=6)
    wide.model.llm_config = {**wide.model.llm_config, "hidden_size": 2 * wide.model.llm_config["hidden_size"]}
    with pytest.raises(ConfigError, match="model.llm_config.hidden_size"):
        fit(wide, resume=True)
    assert not (run / "config.resume-2.yaml").exists()


def test_cluster_logs_and_tensorboard(tiny_corpus, tmp_path, capsys):
    """stdout not a terminal (SLURM, nohup; pytest captures it): plain progress lines with step, loss, lr, audio
    seconds per second and ETA, no progress bar; TensorBoard gets the learning rate and the gradient norm."""
    from ark_asr.run import fit
    from common.runs import read_scalars

    cfg = sft_cfg(tiny_corpus, tmp_path / "run", max_steps=4, progress_every_n_steps=2, val_every_n_steps=4)
    cfg.data.dev = [str(tiny_corpus / "en_dev" / "manifest.jsonl")]
    fit(cfg)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"]
    assert all(k in lines[0] for k in ("| loss ", "| lr ", "audio s/s", "| ETA ")) and "Epoch" not in out
    scalars = read_scalars(tmp_path / "run")
    assert "train/grad_norm" in scalars and any(k.startswith("lr-") for k in scalars)
    assert scalars["val/en_dev/loss"][-1][1] > 0 and "val/en_dev/n_skipped" in scalars  # the dev loss, per set


def test_truncated_wav_without_duration_is_flagged(tmp_path, capsys):
    """A WAV cut short (its header declares more frames than it holds) and no duration in the manifest: flagged by
    `data validate` (with or without --decode), not scored against its full transcript."""
    import numpy as np
    import soundfile as sf

    d = tmp_path / "set"
    d.mkdir()
    sf.write(d / "ok.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    sf.write(
        d / "full.wav",
        (np.random.default_rng(0).standard_normal(48000) * 0.1).astype(np.float32),
        16000,
        subtype="PCM_16",
    )
    data = (d / "full.wav").read_bytes()
    (d / "cut.wav").write_bytes(data[: len(data) // 2])
    rows = [
        {"audio_filepath": "ok.wav", "text": "fine"},
        {"audio_filepath": "cut.wav", "text": "a much longer sentence"},
    ]
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for extra in ([], ["--decode"]):
        assert main(["data", "validate", str(d / "manifest.jsonl"), *extra]) == 1
        out = capsys.readouterr().out
        assert "truncated_audio" in out and "declares 48000 frames" in out


def test_step_checkpoints_kept_and_a_truncated_last_falls_back(tiny_corpus, tmp_path, capsys):
    """ckpt_every_n_steps with keep_step_ckpts=2 keeps the 2 newest; a truncated last.ckpt resumes from the newest
    complete step checkpoint, said in one line."""
    from ark_asr.run import fit

    run = tmp_path / "run"
    fit(sft_cfg(tiny_corpus, run, max_steps=4, ckpt_every_n_steps=1, keep_step_ckpts=2))
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step0000003.ckpt", "step0000004.ckpt"]
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    (run / "summary.json").unlink()
    stale = run / "checkpoints" / ".last.ckpt.abc123.tmp"  # what a SIGKILL mid-save leaves
    stale.write_bytes(b"x" * 1000)
    capsys.readouterr()
    assert (
        fit(sft_cfg(tiny_corpus, run, max_steps=5, ckpt_every_n_steps=1, keep_step_ckpts=2), resume=True)["steps"] == 5
    )
    assert "resuming from step0000004.ckpt" in capsys.readouterr().out
    assert not stale.exists()


# -- start-up mistakes are one line, before any run directory exists (issue 22); each failed on the code before -----
def _fit_cli(cfg, tmp_path, *overrides) -> tuple[int, str]:
    """`asr-distill fit` on ``cfg`` (saved as YAML) with overrides; (exit code, stderr)."""
    import contextlib
    import io

    from common.config import save_yaml

    path = tmp_path / f"cfg_{len(list(tmp_path.glob('cfg_*.yaml')))}.yaml"
    save_yaml(cfg, path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["fit", "-c", str(path), *overrides])
    return rc, err.getvalue().strip()


def test_startup_mistakes_are_one_line_and_leave_no_run_directory(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    cfg = sft_cfg(tiny_corpus, run, max_steps=1)
    cases = [
        (["trainer.accelerator=gpu"], "trainer.accelerator=gpu: no CUDA device"),
        (
            ["stage=opd", "teacher.name_or_path=/no/such/teacher"],
            "teacher.name_or_path: model directory /no/such/teacher",
        ),
        (["optim.lr=.nan"], "'optim.lr': nan is not a finite number"),
        (["model.encoder=/no/such/whisper"], "model.encoder: model directory /no/such/whisper not found"),
    ]
    if not torch.cuda.is_available():
        for overrides, expected in cases:
            rc, err = _fit_cli(cfg, tmp_path, *overrides)
            assert rc == 2 and expected in err and "\n" not in err, (overrides, err)
            assert not run.exists(), overrides
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, err = _fit_cli(cfg, tmp_path, f"run_dir={blocker / 'run'}")  # ENOTDIR: an OSError other than not-found
    assert rc == 2 and str(blocker) in err and "Not a directory" in err and "\n" not in err, err


def test_a_read_only_run_dir_is_one_line(tiny_corpus, tmp_path):
    """A real read-only file system (a read-only tmpfs in a private mount namespace; root ignores file modes)."""
    import subprocess

    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    ro = tmp_path / "ro"
    ro.mkdir()
    cfg = sft_cfg(tiny_corpus, ro / "run", max_steps=1)
    from common.config import save_yaml

    save_yaml(cfg, tmp_path / "cfg.yaml")
    cmd = (
        f"mount -t tmpfs -o size=1m,ro tmpfs '{ro}' && "
        f"'{sys.executable}' -m common.app.cli fit -c '{tmp_path / 'cfg.yaml'}'; echo rc=$?"
    )
    out = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, cwd=REPO)
    if "rc=" not in out.stdout:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {out.stderr.strip()[:200]}")
    err = [line for line in out.stderr.strip().splitlines() if "error" in line]
    assert "rc=2" in out.stdout and len(err) == 1 and "Read-only file system" in err[0] and str(ro) in err[0], (
        out.stderr
    )


def test_fewer_cuts_than_buckets_are_clamped(tiny_corpus, tmp_path):
    from common.data.manifests import write_jsonl_subset

    small = write_jsonl_subset(
        tiny_corpus / "en_train" / "manifest.jsonl", tmp_path / "small" / "manifest.jsonl", rows=slice(0, 3)
    )
    from ark_asr.run import fit

    cfg = sft_cfg(tiny_corpus, tmp_path / "run", max_steps=1)
    cfg.data.train, cfg.data.num_buckets = [str(small)], 8
    assert fit(cfg)["steps"] == 1


def test_resume_of_another_methods_run_or_checkpoint_says_so(tiny_corpus, tmp_path):
    from ark_asr.run import fit
    from common.config import ConfigError
    from common.training.preemption import CheckpointError

    other = tmp_path / "askd_run"
    other.mkdir()
    (other / "config.yaml").write_text("method: askd_whisper\nrun_dir: x\n")
    with pytest.raises(ConfigError) as err:
        fit(sft_cfg(tiny_corpus, other), resume=True)
    assert f"{other} is an askd_whisper run and this config is ark_asr" in str(err.value)
    mine = tmp_path / "ark_run"
    fit(sft_cfg(tiny_corpus, mine, max_steps=1))
    ckpt = mine / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["asr_distill_method"] == "ark_asr"
    foreign = tmp_path / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    torch.save({**state, "asr_distill_method": "askd_whisper"}, foreign / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="is a checkpoint of askd_whisper, not of ark_asr"):
        fit(sft_cfg(tiny_corpus, foreign, max_steps=2), resume=True)


def test_cli_messages_name_the_file_line_and_key(tmp_path, capsys):
    """YAML errors give line and column; overrides may come in two groups; export of a checkpoint outside its run
    directory says so (it named another folder's config.yaml)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("out_dir: x\nsets: [a, b\nmodel: bundled:tiny.en\n")
    assert main(["evaluate", "-c", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}:3:" in err and "invalid YAML" in err and "\n" not in err, err
    rc = main(
        [
            "evaluate",
            "--model",
            "bundled:tiny.en",
            "decoding.max_new_tokens=3",
            "--out",
            str(tmp_path / "e"),
            "decoding.beams=1",
        ]
    )
    assert rc == 2 and "unknown config key 'decoding.beams'" in capsys.readouterr().err  # the second group was read
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(b"x")
    assert main(["export", "--ckpt", str(loose), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not in a run directory's checkpoints/ folder" in err and str(tmp_path.parent / "config.yaml") in err, err


@pytest.mark.unit
def test_a_sharded_fsdp_checkpoint_is_refused_at_start_up(tmp_path, capsys):
    """trainer.fsdp.state_dict_type: sharded under fsdp / fsdp2 would write last.ckpt as a folder of shards, which the
    run's final evaluation and --resume cannot read: one line at config load, before any run directory exists; the
    key is harmless (unused) under ddp."""
    from common.app.cli import main
    from common.training.config import FSDPConfig, TrainerConfig

    for strategy in ("fsdp", "fsdp2"):
        with pytest.raises(ValueError, match="state_dict_type: sharded is not supported"):
            TrainerConfig(strategy=strategy, fsdp=FSDPConfig(state_dict_type="sharded"))
    assert TrainerConfig(strategy="ddp", fsdp=FSDPConfig(state_dict_type="sharded")).strategy == "ddp"
    run = tmp_path / "run"
    cfg = Path(__file__).resolve().parents[1] / "configs" / "ark_asr" / "tiny" / "sft.yaml"
    sharded = ["trainer.strategy=fsdp2", "trainer.fsdp.state_dict_type=sharded"]
    rc = main(["fit", "-c", str(cfg), *sharded, f"run_dir={run}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and not run.exists()
    assert len(err) == 1 and "trainer.fsdp.state_dict_type: sharded" in err[0], err


def test_deterministic_run_holds_its_flag_only_while_it_runs(tiny_corpus, tmp_path):
    """``trainer.deterministic=true``: torch's deterministic algorithms are on during the run's steps and off again
    after it (Lightning's Trainer sets them process-wide; the demo's teacher adaptation is followed in the same
    process by its teacher cache and latency stages, which must not inherit them). So is the cuBLAS workspace
    variable Lightning sets with it, whether or not the user had set it."""
    import os

    import lightning as L

    from ark_asr.run import fit

    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            seen.append((torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")))

    before = os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    try:
        assert not torch.are_deterministic_algorithms_enabled()
        fit(sft_cfg(tiny_corpus, tmp_path / "det", deterministic=True, max_steps=2), callbacks=[Probe()])
        assert seen == [(True, ":4096:8")] * 2
        assert not torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"  # the user's own value is kept
        fit(sft_cfg(tiny_corpus, tmp_path / "det2", deterministic=True, max_steps=1))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        if before is not None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = before
