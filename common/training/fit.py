"""The run-directory life cycle shared by both methods (``asr-distill fit``).

A run directory holds ``config.yaml``, ``meta.json`` (git revision), ``checkpoints/`` (``last.ckpt`` plus step
checkpoints), TensorBoard logs under ``tb/``, per-test-set evaluation files and, last, ``summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Protocol

import lightning as L
import torch

from common.training.config import OptimConfig, TrainerConfig
from common.training.preemption import (
    CheckpointError,
    Preempted,
    PreemptionCheckpoint,
    StopAfterSteps,
    check_checkpoint,
    load_checkpoint,
)
from common.training.strategy import TeacherPlacement
from common.training.trainer import build_trainer


class ExperimentConfig(Protocol):
    """What :func:`run_fit` reads from a method's experiment config (``ArkConfig``, ``AskdConfig``)."""

    method: str
    run_dir: str
    optim: OptimConfig
    trainer: TrainerConfig
    data: Any  # common.data.datamodule.DataConfig
    decoding: Any  # common.evaluate.DecodeConfig
    teacher: Any  # common.teachers.TeacherConfig (placement of the frozen teacher)


def run_fit(
    cfg: ExperimentConfig,
    build: Callable[[], tuple[L.LightningModule, Any, dict]],
    transcriber: Callable[[L.LightningModule], Any],
    resume: bool = False,
    overwrite: bool = False,
    stop_after_steps: Optional[int] = None,
    on_trained: Optional[Callable[[L.LightningModule, Path], None]] = None,
    callbacks: Optional[list] = None,
) -> dict[str, Any]:
    """The run-directory life cycle shared by both methods.

    prepare (or resume) ``cfg.run_dir`` -> seed -> config.yaml + meta.json -> ``build()`` (module, datamodule, info)
    -> Trainer.fit -> last.ckpt -> ``on_trained`` (e.g. save the student) -> evaluate ``cfg.data.test`` with
    ``transcriber(module)`` on rank 0 -> summary.json (last). ``stop_after_steps`` stops early and returns without a
    summary. ``resume`` continues from ``last.ckpt`` when there is one and starts afresh otherwise (so a requeued
    job can always pass ``--resume``). A SIGTERM/SIGUSR1 during fit leaves ``last.ckpt`` and raises
    :class:`Preempted` / Lightning's ``SIGTERMException``.
    """

    from common.io import run_dir_lock

    check_accelerator(cfg.trainer)  # start-up checks: before the lock and the run directory exist
    run_dir = Path(cfg.run_dir)
    # one process per run directory for the whole run (rank 0 holds it; the other ranks are its own processes)
    lock = run_dir_lock(run_dir, cfg.trainer.lock_wait_seconds if resume else 0.0)
    with lock if launch_rank() == 0 else contextlib.nullcontext(), torch_flags_scoped():
        return _run_fit(cfg, build, transcriber, resume, overwrite, stop_after_steps, on_trained, callbacks)


@contextlib.contextmanager
def torch_flags_scoped():
    """The process-wide torch flags a Lightning Trainer sets (``trainer.deterministic`` -> torch's deterministic
    algorithms, cuDNN's benchmark / deterministic, and the ``CUBLAS_WORKSPACE_CONFIG`` variable that cuBLAS's
    reproducible mode needs) put back as they were when the run ends: one run's ``trainer.deterministic=true`` would
    otherwise hold for whatever the process does next (the demo's teacher cache and latency stages, a notebook's next
    cell, a sweep's next point)."""
    import os

    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def check_accelerator(trainer: TrainerConfig) -> None:
    """``trainer.accelerator: gpu`` (or cuda) on a host without a visible CUDA device, or more devices than it has, is
    one line naming the key (Lightning raised a traceback after the run directory existed)."""
    import os

    if trainer.accelerator in ("gpu", "cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if n == 0:
            raise ValueError(
                f"trainer.accelerator={trainer.accelerator}: no CUDA device on this host"
                + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
                + "; use trainer.accelerator=cpu or auto"
            )
        if trainer.devices > n:
            raise ValueError(f"trainer.devices={trainer.devices}: this host has {n} CUDA device(s)")


def _run_fit(cfg, build, transcriber, resume, overwrite, stop_after_steps, on_trained, callbacks) -> dict[str, Any]:
    from common.config import save_yaml
    from common.io import SUMMARY, atomic_write_json, git_revision, is_complete, prepare_run_dir

    run_dir = Path(cfg.run_dir)
    resuming = resume and (run_dir / "config.yaml").is_file()
    if resuming:
        check_resume_config(run_dir, cfg)  # architecture / data / optimisation changes: refused, listing the keys
    if resume and is_complete(run_dir):
        done = json.loads((run_dir / SUMMARY).read_text())
        if done.get("stopped_early") or done.get("steps", 0) >= cfg.trainer.max_steps:
            return done
        if launch_rank() == 0:  # a longer schedule: continue from last.ckpt; the finished run's summary is kept
            (run_dir / SUMMARY).rename(run_dir / f"summary.step{done['steps']:07d}.json")
    if launch_rank() == 0:  # temporary files of a killed checkpoint write (SIGKILL, power loss); we hold the lock
        for stale in (run_dir / "checkpoints").glob(".*.tmp") if (run_dir / "checkpoints").is_dir() else []:
            stale.unlink(missing_ok=True)
    ckpt = last_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        ckpt = usable_checkpoint(ckpt)  # a truncated last.ckpt: the newest good step checkpoint, or one line
        check_checkpoint_method(ckpt, cfg.method)
    if (not resume or not run_dir.exists()) and launch_rank() == 0:
        prepare_run_dir(run_dir, overwrite=overwrite)
    L.seed_everything(cfg.trainer.seed, workers=True)
    module, dm, info = build()
    cbs = [TeacherPlacement(cfg.teacher), MethodStamp(cfg.method)] + list(callbacks or [])
    if stop_after_steps:
        cbs.append(StopAfterSteps(stop_after_steps))
    trainer = build_trainer(cfg.trainer, run_dir, callbacks=cbs, module=module)
    if trainer.is_global_zero:  # config.yaml is what the run started with; each resume adds its own (what it ran)
        n = len(list(run_dir.glob("config.resume-*.yaml"))) + 1
        save_yaml(cfg, run_dir / ("config.yaml" if not resuming else f"config.resume-{n}.yaml"))
        atomic_write_json(
            run_dir / "meta.json",
            {
                "git_revision": git_revision(),
                "method": cfg.method,
                "torch": torch.__version__,
                "world_size": trainer.world_size,
                "resumed_from": str(ckpt) if ckpt else None,
            },
        )
    t0, c0 = time.time(), time.process_time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    train_s, train_cpu = time.time() - t0, time.process_time() - c0
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # the full state, resumable
    preempt = next(c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint))
    if preempt.stopped_at is not None:
        if preempt.deferred is not None:  # e.g. submitit / Lightning requeue the job now that the checkpoint exists
            preempt.deferred()
        raise Preempted(preempt.received or signal.SIGUSR1, trainer.global_step, preempt.path)
    world = trainer.world_size
    train_skipped = module.train_skips.total(trainer) if hasattr(module, "train_skips") else 0  # every rank
    _leave_process_group()  # the rest runs on rank 0 alone
    if trainer.global_step < cfg.trainer.max_steps:  # stopped early: resumable, not complete
        return {"method": cfg.method, "steps": trainer.global_step, "stopped_early": True}
    if not trainer.is_global_zero:
        return {"method": cfg.method, "steps": trainer.global_step, "rank": trainer.global_rank}
    if cfg.trainer.strategy in (
        "fsdp",
        "fsdp2",
    ):  # the sharded module is unusable outside the trainer: reload the full weights
        module = _reload(build, run_dir / "checkpoints" / "last.ckpt")
    if on_trained is not None:
        on_trained(module, run_dir)
    summary: dict[str, Any] = {
        "method": cfg.method,
        "steps": trainer.global_step,
        "train_seconds": round(train_s, 1),
        "train_cpu_seconds": round(train_cpu, 1),
        "torch_threads": torch.get_num_threads(),
        "world_size": world,
        "n_trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "data_skipped": {**dm.skip_report(), "train_undecodable": train_skipped},
        **info,
    }
    if cfg.data.test:
        summary.update(evaluate_test_sets(cfg, module, transcriber, run_dir))
    atomic_write_json(run_dir / SUMMARY, summary)
    return summary


def evaluate_test_sets(
    cfg: ExperimentConfig, module: L.LightningModule, transcriber: Callable[[L.LightningModule], Any], run_dir: Path
) -> dict:
    """Decode ``cfg.data.test`` with the trained model into ``run_dir/eval`` (per-utterance errors kept), at the
    precision it trained in (``trainer.precision: bf16-mixed`` decodes under the same autocast)."""
    from common.evaluate import EvalConfig, MixedPrecisionTranscriber, markdown_table, run_evaluation

    module.eval()
    ev = EvalConfig(
        out_dir=str(run_dir / "eval"),
        model=str(run_dir),
        sets=list(cfg.data.test),
        decoding=cfg.decoding,
        bad_sample_policy=cfg.data.bad_sample_policy,
    )
    device = next(module.parameters()).device
    tr = MixedPrecisionTranscriber(transcriber(module), cfg.trainer.precision, device)
    res = run_evaluation(ev, overwrite=True, transcriber=tr)
    return {"sets": res["sets"], "table": markdown_table(res, run_dir.name)}


def launch_rank() -> int:
    """This process's global rank as the launcher (torchrun, srun, Lightning) set it, before a process group exists."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _reload(build: Callable[[], tuple[L.LightningModule, Any, dict]], ckpt: Path) -> L.LightningModule:
    module, _, _ = build()
    state = load_checkpoint(ckpt)
    module.load_state_dict(state["state_dict"], strict=False)
    module.on_load_checkpoint(state)
    return module


# config keys a resumed run may change: how long it trains, how often it checkpoints, validates and logs, where it runs,
# which sets it evaluates and how it decodes them. Anything else changes what the run computes: a new run.
RESUMABLE_KEYS = (
    "run_dir",
    "trainer.lock_wait_seconds",
    "trainer.max_steps",
    "trainer.val_every_n_steps",
    "trainer.ckpt_every_n_steps",
    "trainer.last_ckpt_every_minutes",
    "trainer.log_every_n_steps",
    "trainer.progress_bar",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.fsdp",
    "trainer.slurm_requeue",
    "trainer.accelerator",
    "data.dev",
    "data.test",
    "data.num_workers",
    "decoding",
    "teacher.device",
    "teacher.placement",
)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def check_resume_config(run_dir: Path, cfg: Any) -> None:
    """Compare a resumed run's config with the one it started with (``config.yaml``): schedule extensions
    (``trainer.max_steps``) and the keys in ``RESUMABLE_KEYS`` may change; any other difference (architecture, data,
    optimiser, losses) is refused in one line listing the keys, before anything is built or written."""
    import yaml

    from common.config import ConfigError, to_dict

    saved = _flatten(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {})
    if saved.get("method") not in (None, getattr(cfg, "method", None)):
        raise ConfigError(
            f"--resume: {run_dir} is an {saved['method']} run and this config is {cfg.method}; use another run_dir"
        )
    new = _flatten(yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
    changed = sorted(k for k in set(saved) | set(new) if saved.get(k) != new.get(k))
    fixed = [k for k in changed if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)]
    if fixed:
        diff = "; ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in fixed[:6])
        more = f" (+{len(fixed) - 6} more)" if len(fixed) > 6 else ""
        raise ConfigError(
            f"--resume of {run_dir} with a changed config: {diff}{more}; these change what the run computes: use a new "
            "run_dir (or --overwrite to start this one again)"
        )


class MethodStamp(L.Callback):
    """Writes the method's name into every checkpoint (``asr_distill_method``), so that a checkpoint of another method
    is refused by name at resume instead of failing deep inside ``load_state_dict``."""

    def __init__(self, method: str) -> None:
        self.method = method

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["asr_distill_method"] = self.method


def check_checkpoint_method(ckpt: Path, method: str) -> None:
    """A checkpoint written by another method (its ``asr_distill_method``; read lazily, memory-mapped) is one line."""
    state = load_checkpoint(ckpt, mmap=True)
    other = state.get("asr_distill_method") if isinstance(state, dict) else None
    if other is not None and other != method:
        raise CheckpointError(f"{ckpt} is a checkpoint of {other}, not of {method}: this run cannot resume from it")


def usable_checkpoint(last: Path) -> Path:
    """``last.ckpt`` if it is a complete archive; else the newest complete step checkpoint beside it (said in one
    line); else a one-line :class:`CheckpointError` naming the file."""
    try:
        return check_checkpoint(last)
    except CheckpointError:
        for step in sorted(last.parent.glob("step*.ckpt"), reverse=True):  # zero-padded step numbers sort by step
            try:
                check_checkpoint(step)
            except CheckpointError:
                continue
            print(
                f"{last} is truncated or corrupt; resuming from {step.name}, the newest complete checkpoint", flush=True
            )
            return step
        raise


def last_checkpoint(run_dir: Path) -> Optional[Path]:
    p = Path(run_dir) / "checkpoints" / "last.ckpt"
    return p if p.is_file() else None
