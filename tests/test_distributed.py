"""Scale: 2-process CPU DDP fits of both methods (torchrun, gloo), teacher sharding, and signal -> checkpoint -> resume.

The DDP runs are launched exactly as a user launches them (``torchrun -m common.app.cli fit ... trainer.strategy=ddp``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SignalAt, ark_cfg, ark_model_cfg, askd_cfg

from common.config import save_yaml
from common.runs import read_scalars

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(
    cfg, tmp_path: Path, *overrides: str, nproc: int = 2, strategy: str = "ddp", resume: bool = False
) -> subprocess.CompletedProcess:
    path = tmp_path / f"{Path(cfg.run_dir).name}.yaml"
    save_yaml(cfg, path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={_free_port()}",
        "-m",
        "common.app.cli",
        "fit",
        "-c",
        str(path),
        *(["--resume"] if resume else []),
        f"trainer.strategy={strategy}",
        f"trainer.devices={nproc}",
        "trainer.accelerator=cpu",
        *overrides,
    ]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def _check_synced_validation(run_dir: Path, dev: str, exact_rate: bool) -> dict:
    """The dev metrics logged under DDP (each rank decodes half the set; counts summed across ranks) against the
    rank-0 evaluation of the same final weights on the same set, decoded by one process."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    scalars = read_scalars(run_dir, "val/")
    one = summary["sets"][dev]
    logged = {k: scalars[f"val/{dev}/{k}"][-1][1] for k in ("n_utts", "ref_units", "sub", "del", "ins", "error_rate")}
    assert logged["n_utts"] == one["n_utts"] == 8  # every dev utterance scored exactly once across the ranks
    assert logged["ref_units"] == one["ref_units"]
    if exact_rate:
        assert [logged[k] for k in ("sub", "del", "ins")] == [one[k] for k in ("sub", "del", "ins")]
        assert logged["error_rate"] == pytest.approx(one["error_rate"], abs=1e-6)
    ck = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 3 and not any(k.startswith("teacher") for k in ck["state_dict"])
    return ck


@pytest.mark.distributed
def test_ddp_two_process_askd_fit(tiny_corpus, tmp_path, whisper_tiny):
    dev = str(tiny_corpus / "en_dev" / "manifest.jsonl")
    cfg = askd_cfg(
        tiny_corpus,
        tmp_path / "askd_ddp",
        trainer={"max_steps": 3, "val_every_n_steps": 3},
        data={"dev": [dev], "test": [dev]},
    )
    _torchrun(cfg, tmp_path)
    run = tmp_path / "askd_ddp"
    # Whisper's encoder sees fixed 30 s windows, so decoding does not depend on the batch: the synced WER is exact
    _check_synced_validation(run, "en_dev", exact_rate=True)
    # TensorBoard holds the sample transcripts (reference / student / teacher) as text, and their audio
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(next((run / "tb").rglob("events.out.tfevents.*"))), size_guidance={"tensors": 0, "audio": 0}
    )
    acc.Reload()
    assert "val/en_dev/samples/text_summary" in acc.Tags()["tensors"] and len(acc.Tags()["audio"]) == 3
    table = acc.Tensors("val/en_dev/samples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| reference | student | teacher |" in table and table.count("\n| synth_en_dev_") == 3
    # the DDP checkpoint resumes in one process (another world size): weights, optimizer and step carry over
    from askd_whisper.run import fit

    moved = tmp_path / "askd_1proc"
    shutil.copytree(run, moved)
    (moved / "summary.json").unlink()
    cfg1 = askd_cfg(tiny_corpus, moved, trainer={"max_steps": 5}, data={"dev": [], "test": []})
    with pytest.warns(UserWarning, match="world size 2"):
        assert fit(cfg1, resume=True)["steps"] == 5


@pytest.mark.distributed
def test_ddp_two_process_ark_fit(tiny_corpus, tmp_path):
    dev = str(tiny_corpus / "en_dev" / "manifest.jsonl")
    cfg = ark_cfg(
        tiny_corpus,
        tmp_path / "ark_ddp",
        "sft",
        trainer={"max_steps": 3, "val_every_n_steps": 3},
        data={"dev": [dev], "test": [dev]},
    )
    _torchrun(cfg, tmp_path)
    # a random-init LM's near-uniform logits make argmax sensitive to padding: counts are checked, not the rate
    _check_synced_validation(tmp_path / "ark_ddp", "en_dev", exact_rate=False)
    assert (tmp_path / "ark_ddp" / "student" / "ark_config.json").is_file()


# -- FSDP2 ---------------------------------------------------------------------------------------
def _ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _assert_same_run(a: Path, b: Path, atol: float) -> None:
    """The same losses at every logged step and the same weights (and self-teacher) after the last one."""
    la, lb = read_scalars(a, "train/loss")["train/loss"], read_scalars(b, "train/loss")["train/loss"]
    assert [s for s, _ in la] == [s for s, _ in lb] and len(la) >= 3
    assert [v for _, v in lb] == pytest.approx([v for _, v in la], rel=1e-4, abs=1e-5)
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    diff = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    assert diff < atol, diff


@pytest.mark.slow  # four 2-process runs (~3-4 min on 2 cores): make test-slow; ASKD's and OPD's FSDP2 tests are default
@pytest.mark.distributed
def test_fsdp2_trains_ark_like_ddp_and_its_checkpoints_move_across_strategies(tiny_corpus, tmp_path):
    """trainer.strategy=fsdp2 (fully_shard per transformer layer through Lightning's ModelParallelStrategy) on 2 gloo
    processes: the same per-step losses and, after 4 SFT steps, the same weights as DDP (within 1e-5: fp32, other
    reduction order); its checkpoint is one full-state file that resumes in one process, and a DDP checkpoint resumes
    under FSDP2."""
    over = {"trainer": {"max_steps": 4, "log_every_n_steps": 1}, "data": {"dev": [], "test": []}}
    runs = {}
    for strategy in ("ddp", "fsdp2"):
        runs[strategy] = tmp_path / f"ark_{strategy}"
        _torchrun(ark_cfg(tiny_corpus, runs[strategy], "sft", **over), tmp_path, strategy=strategy)
    _assert_same_run(runs["ddp"], runs["fsdp2"], atol=1e-5)
    assert (runs["fsdp2"] / "checkpoints" / "last.ckpt").is_file()  # a file, not a folder of shards
    from ark_asr.run import fit

    one = tmp_path / "ark_fsdp2_then_1proc"
    shutil.copytree(runs["fsdp2"], one)
    (one / "summary.json").unlink()
    with pytest.warns(UserWarning, match="world size 2"):
        assert (
            fit(ark_cfg(tiny_corpus, one, "sft", trainer={"max_steps": 5}, data=over["data"]), resume=True)["steps"]
            == 5
        )
    moved = tmp_path / "ark_ddp_then_fsdp2"
    shutil.copytree(runs["ddp"], moved)
    (moved / "summary.json").unlink()
    cfg = ark_cfg(tiny_corpus, moved, "sft", trainer={"max_steps": 5, "log_every_n_steps": 1}, data=over["data"])
    _torchrun(cfg, tmp_path, strategy="fsdp2", resume=True)
    assert _ckpt(moved)["global_step"] == 5


@pytest.mark.distributed
def test_fsdp2_trains_askd_with_self_kd_like_ddp(tiny_corpus, tmp_path):
    """ASKD-Whisper under FSDP2 (its decoder and encoder layers sharded), through the teacher-KD phase into self-KD
    with an EMA self-teacher (gathered full weights): the same losses and weights (1e-4), self-teacher included, as
    DDP."""
    over = {
        "trainer": {"max_steps": 4, "log_every_n_steps": 1},
        "data": {"dev": [], "test": []},
        "self_kd": {"enabled": True, "boundary": 0.5, "self_teacher": "ema", "ema_decay": 0.5},
    }
    runs = {}
    for strategy in ("ddp", "fsdp2"):
        runs[strategy] = tmp_path / f"askd_{strategy}"
        _torchrun(askd_cfg(tiny_corpus, runs[strategy], **over), tmp_path, strategy=strategy)
    # 1e-4: AdamW's normalised update m / sqrt(v) amplifies reduction-order differences of near-zero gradients
    # (the losses agree to 1e-5; lr 1e-3 x 4 steps bounds any weight's move by ~4e-3)
    _assert_same_run(runs["ddp"], runs["fsdp2"], atol=1e-4)
    assert _ckpt(runs["fsdp2"])["askd"]["self_teacher"] is not None


@pytest.mark.distributed
def test_fsdp2_opd_step_with_uneven_rollouts_equals_the_unsharded_step(tiny_corpus, tmp_path):
    """OPD under FSDP2 with rank 0 rolling out at most 4 tokens and rank 1 at most 12: the rollout holds gathered
    weights (no collective per token, so the ranks never wait on each other), and each rank's loss and the averaged
    gradients equal an unsharded copy's."""
    out = tmp_path / "fsdp2_opd.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    r = subprocess.run(
        [*cmd, str(REPO / "tests" / "fsdp2_opd_worker.py"), str(tiny_corpus), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    res = json.loads(out.read_text())
    assert res["n_sharded"] > 0
    (len0, ref_len0, loss0, ref0), (len1, ref_len1, loss1, ref1) = res["per_rank"]
    assert len0 == ref_len0 and len1 == ref_len1 and len0 <= 4 < len1  # uneven: rank 1 decoded more tokens
    assert loss0 == pytest.approx(ref0, rel=1e-5) and loss1 == pytest.approx(ref1, rel=1e-5)
    assert res["max_grad_diff"] < 1e-5


# -- signals -------------------------------------------------------------------------------------


def _state(run_dir: Path) -> dict:
    ck = _ckpt(run_dir)
    st = (ck.get("askd") or {}).get("self_teacher") or {}  # ASKD's self-teacher, when there is one
    return {**ck["state_dict"], **{f"self_teacher.{k}": v for k, v in st.items()}}


def test_signals_checkpoint_and_resume_to_the_same_weights(tiny_corpus, tmp_path, teacher):
    """SIGTERM and SIGUSR1 mid-run each leave last.ckpt; --resume ends at the same weights as an uninterrupted run."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from askd_whisper.run import fit
    from common.training import Preempted

    fit(askd_cfg(tiny_corpus, tmp_path / "full"), teacher=teacher)
    full = _state(tmp_path / "full")
    for name, signum, exc in (("term", signal.SIGTERM, SIGTERMException), ("usr1", signal.SIGUSR1, Preempted)):
        cfg = askd_cfg(tiny_corpus, tmp_path / name)
        with pytest.raises(exc) as info:
            fit(cfg, teacher=teacher, callbacks=[SignalAt(2, signum)])
        if exc is Preempted:
            assert info.value.code == 128 + signal.SIGUSR1
        ck = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert 2 <= ck["global_step"] <= 3 and not (tmp_path / name / "summary.json").exists()
        assert fit(cfg, resume=True, teacher=teacher)["steps"] == 6
        resumed = _state(tmp_path / name)
        assert resumed.keys() == full.keys()
        for k in full:
            torch.testing.assert_close(resumed[k], full[k], atol=0, rtol=0, msg=f"{name}: {k}")


def test_resume_without_a_checkpoint_starts_the_run(tiny_corpus, tmp_path, teacher):
    """A requeued job always passes --resume: with nothing to resume it starts from scratch."""
    from askd_whisper.run import fit

    assert (
        fit(askd_cfg(tiny_corpus, tmp_path / "new", trainer={"max_steps": 2}), resume=True, teacher=teacher)["steps"]
        == 2
    )


# -- teacher sharding (FSDP2 fully_shard works on CPU with gloo) -------------------------------------
def _shard_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from common.training import shard_frozen
    from common.whisper import load_whisper

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    from common.teachers.whisper_teacher import WhisperTeacher

    t = WhisperTeacher(*load_whisper("bundled:tiny.en"))
    batch = t.prepare([torch.sin(torch.arange(16000 * 2) / 7.0).numpy() * 0.1], ["en"])
    targets = [t.encode_text("hello world", "en")]
    ref = t.score(batch, targets, top_k=4)
    local_before = sum(p.numel() for p in t.model.parameters())
    n = shard_frozen(t.model)
    sc = t.score(batch, targets, top_k=4)
    local_after = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in t.model.parameters())
    torch.save(
        {
            "n": n,
            "before": local_before,
            "after": local_after,
            "ref": ref.topk_logprobs,
            "sharded": sc.topk_logprobs,
            "ref_ids": ref.topk_ids,
            "ids": sc.topk_ids,
        },
        f"{out}.{rank}",
    )
    dist.destroy_process_group()


@pytest.mark.distributed
def test_sharded_teacher_scores_like_the_replicated_one(tmp_path, whisper_tiny):
    import torch.multiprocessing as mp

    mp.spawn(_shard_worker, args=(_free_port(), str(tmp_path / "res")), nprocs=2)
    for rank in (0, 1):
        r = torch.load(f"{tmp_path / 'res'}.{rank}", weights_only=True)  # ints and tensors only
        assert r["n"] == 8  # tiny.en: 4 encoder + 4 decoder layers
        assert r["after"] < 0.8 * r["before"]  # each rank holds half of every layer (embeddings stay whole)
        assert torch.equal(r["ids"], r["ref_ids"])
        torch.testing.assert_close(r["sharded"], r["ref"], atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_and_accumulation(tiny_corpus, tmp_path):
    """Activation checkpointing recomputes exactly (same weights); accumulation counts optimizer steps."""
    from ark_asr.run import fit
    from common.training import enable_activation_checkpointing, layer_classes

    base = dict(trainer={"max_steps": 2, "accumulate_grad_batches": 2}, data={"test": []})
    plain = fit(ark_cfg(tiny_corpus, tmp_path / "plain", "sft", **base))
    ac = fit(
        ark_cfg(
            tiny_corpus,
            tmp_path / "ac",
            "sft",
            **{**base, "trainer": {**base["trainer"], "activation_checkpointing": True}},
        )
    )
    assert plain["steps"] == ac["steps"] == 2
    a = torch.load(tmp_path / "plain" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "ac" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 4  # 2 steps x 2 batches
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], atol=1e-6, rtol=1e-5, msg=k)
    # the layers FSDP wraps and checkpoints: the encoder's and the LM's transformer layers

    from ark_asr.model import build_student

    names = {c.__name__ for c in layer_classes(build_student(ark_model_cfg()))}
    assert {"WhisperEncoderLayer", "Qwen3DecoderLayer"} <= names
    assert enable_activation_checkpointing(build_student(ark_model_cfg())) >= 1


def test_fsdp_strategy_wraps_transformer_layers(whisper_tiny):
    """The FSDP strategy built from config (it runs only on GPUs; here its construction is checked)."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from common.training import TrainerConfig, make_strategy

    model, _ = whisper_tiny
    s = make_strategy(TrainerConfig(strategy="fsdp", activation_checkpointing=True), model)
    assert isinstance(s, FSDPStrategy) and s.kwargs["use_orig_params"] and s._state_dict_type == "full"
    assert {c.__name__ for c in s.kwargs["auto_wrap_policy"]._module_classes} == {
        "WhisperEncoderLayer",
        "WhisperDecoderLayer",
    }
    assert isinstance(make_strategy(TrainerConfig(strategy="ddp")), DDPStrategy)


@pytest.mark.unit
def test_grad_norm_of_plain_gradients_is_torchs_total_norm_and_fsdp2_is_a_strategy_of_its_own():
    """common.training.grad_norm (what FSDP2Gradients clips by and GradNormLog logs) on unsharded gradients equals
    torch's clip_grad_norm_ total norm; trainer.strategy=fsdp2 is Lightning's ModelParallelStrategy as pure data
    parallelism, full-state checkpoints, with Lightning's own clipping off (FSDP2Gradients clips instead)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from common.training import TrainerConfig, grad_norm, make_strategy

    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    m(torch.randn(5, 3)).pow(2).sum().backward()
    params = list(m.parameters())
    torch.testing.assert_close(grad_norm(params), torch.nn.utils.clip_grad_norm_(params, 1e9))
    s = make_strategy(TrainerConfig(strategy="fsdp2", devices=4, num_nodes=2))
    assert isinstance(s, ModelParallelStrategy)
    assert (s._data_parallel_size, s._tensor_parallel_size, s._save_distributed_checkpoint) == (8, 1, False)
