"""The Lightning Trainer of a run directory, built from ``trainer`` (checkpoints, TensorBoard, SLURM, strategy)."""

from __future__ import annotations

import signal
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from common.training.config import TrainerConfig
from common.training.preemption import AtomicCheckpointIO, PreemptionCheckpoint
from common.training.progress import GradNormLog, ProgressLines, is_terminal
from common.training.strategy import FSDP2Gradients, enable_activation_checkpointing, make_strategy

_PROJECT_TRIGGERED_WARNINGS = (
    r".*does not have many workers.*",  # data.num_workers is a config choice (CPU runs use 0 on purpose)
    r".*is smaller than the logging interval.*",  # tiny CPU runs log every step
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning internals on torch 2.14
    r".*`is_gradient_checkpointing` is deprecated.*",  # transformers internals, called by peft
)


def build_trainer(
    cfg: TrainerConfig,
    run_dir: Path,
    callbacks: Optional[list] = None,
    limit_val_batches: Any = None,
    module: Optional[torch.nn.Module] = None,
) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    ckpts = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            save_last=True,
            save_top_k=(cfg.keep_step_ckpts or -1) if cfg.ckpt_every_n_steps else 0,
            monitor="step" if cfg.ckpt_every_n_steps and cfg.keep_step_ckpts else None,  # keep the newest N
            mode="max",
            every_n_train_steps=cfg.ckpt_every_n_steps or cfg.max_steps,
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            enable_version_counter=False,  # a resumed run rewrites last.ckpt, never adds last-v1.ckpt
        )
    ]
    if cfg.last_ckpt_every_minutes:
        from datetime import timedelta

        ckpts.append(  # last.ckpt by wall time, so an interrupted run loses little whatever max_steps is
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                save_last=True,
                save_top_k=0,
                train_time_interval=timedelta(minutes=cfg.last_ckpt_every_minutes),
                enable_version_counter=False,
            )
        )
    kw: dict[str, Any] = {}
    if cfg.val_every_n_steps:
        kw.update(val_check_interval=cfg.val_every_n_steps, check_val_every_n_epoch=None)
    if limit_val_batches is not None:
        kw["limit_val_batches"] = limit_val_batches
    kw["plugins"] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # srun-launched: one task per device, requeue on SIGUSR1
        kw["plugins"].append(SLURMEnvironment(auto_requeue=cfg.slurm_requeue, requeue_signal=signal.SIGUSR1))
    if cfg.activation_checkpointing and cfg.strategy != "fsdp" and module is not None:
        enable_activation_checkpointing(module)
    for message in _PROJECT_TRIGGERED_WARNINGS:  # decided on purpose here; they would only bury real warnings
        warnings.filterwarnings("ignore", message=message)
    preempt = PreemptionCheckpoint(run_dir / "checkpoints" / "last.ckpt")
    from lightning.pytorch.callbacks import LearningRateMonitor

    watch = [LearningRateMonitor(logging_interval="step"), GradNormLog(cfg.log_every_n_steps)]
    fsdp2 = [FSDP2Gradients(cfg.gradient_clip_val)] if cfg.strategy == "fsdp2" else []  # first: sync, then measure
    terminal = is_terminal()
    if not terminal:
        watch.append(ProgressLines(cfg.progress_every_n_steps, cfg.max_steps))
    return L.Trainer(
        max_steps=cfg.max_steps,
        max_epochs=-1,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=make_strategy(cfg, module),
        precision=cfg.precision,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=None if cfg.strategy == "fsdp2" else cfg.gradient_clip_val,  # FSDP2Gradients clips
        log_every_n_steps=cfg.log_every_n_steps,
        deterministic=cfg.deterministic,
        enable_progress_bar=cfg.progress_bar and terminal,
        use_distributed_sampler=False,
        default_root_dir=str(run_dir),
        logger=TensorBoardLogger(str(run_dir), name="tb", version=""),
        callbacks=[*fsdp2, *ckpts, preempt, *watch] + list(callbacks or []),
        num_sanity_val_steps=0,
        **kw,
    )
