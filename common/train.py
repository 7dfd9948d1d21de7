"""Trainer, optimizer and run-directory plumbing shared by both methods (``asr-distill fit``).

A method's config names itself (``method: askd_whisper`` / ``method: ark_asr``) and holds ``run_dir``,
``optim`` and ``trainer`` sections. A run directory holds ``config.yaml``, ``meta.json`` (git revision),
``checkpoints/`` (``last.ckpt`` plus step checkpoints, written atomically by Lightning), TensorBoard logs
under ``tb/``, per-test-set evaluation files and, last, ``summary.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import lightning as L
import torch
import yaml


@dataclass
class OptimConfig:
    """AdamW with warm-up and a decay schedule."""

    lr: float = 1e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warm-up, to min_lr_ratio * lr at trainer.max_steps."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr (cosine/linear)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need lr > 0, warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")


@dataclass
class TrainerConfig:
    """Lightning Trainer settings; the strategy is config, modules never branch on it."""

    max_steps: int = 1000
    """Optimizer steps."""
    accelerator: str = "auto"
    """cpu, gpu or auto."""
    devices: int = 1
    """Devices per node."""
    num_nodes: int = 1
    """Nodes (SLURM: one task per device)."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """Distribution strategy."""
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    """Numeric precision."""
    accumulate_grad_batches: int = 1
    """Gradient accumulation."""
    gradient_clip_val: Optional[float] = 1.0
    """Gradient-norm clipping (None: off)."""
    val_every_n_steps: Optional[int] = None
    """Validation interval in steps (None: at the end of each epoch)."""
    ckpt_every_n_steps: Optional[int] = None
    """Also keep a checkpoint every n steps (last.ckpt is always kept)."""
    log_every_n_steps: int = 10
    """Logging interval."""
    seed: int = 0
    """Global seed (weights init, sampling, dropout)."""
    deterministic: bool = False
    """torch deterministic algorithms."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.accumulate_grad_batches < 1:
            raise ValueError("max_steps and accumulate_grad_batches must be >= 1")


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the peak lr at a step: linear warm-up, then constant / cosine / linear decay."""

    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        r = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * r)) if cfg.schedule == "cosine" else 1 - r
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return f


def configure_optim(params, cfg: OptimConfig, total_steps: int) -> dict[str, Any]:
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def build_trainer(cfg: TrainerConfig, run_dir: Path, callbacks: Optional[list] = None, limit_val_batches: Any = None) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=-1 if cfg.ckpt_every_n_steps else 0,
                           every_n_train_steps=cfg.ckpt_every_n_steps or cfg.max_steps, filename="step{step:07d}",
                           auto_insert_metric_name=False)
    kw: dict[str, Any] = {}
    if cfg.val_every_n_steps:
        kw.update(val_check_interval=cfg.val_every_n_steps, check_val_every_n_epoch=None)
    if limit_val_batches is not None:
        kw["limit_val_batches"] = limit_val_batches
    return L.Trainer(
        max_steps=cfg.max_steps, max_epochs=-1, accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, precision=cfg.precision, accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val, log_every_n_steps=cfg.log_every_n_steps, deterministic=cfg.deterministic,
        enable_progress_bar=cfg.progress_bar, use_distributed_sampler=False, default_root_dir=str(run_dir),
        logger=TensorBoardLogger(str(run_dir), name="tb", version=""), callbacks=[ckpt] + list(callbacks or []),
        num_sanity_val_steps=0, **kw,
    )


class StopAfterSteps(L.Callback):
    """Stop cleanly after ``n`` optimizer steps (used to test resumption; a preempted run looks the same)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.n:
            trainer.should_stop = True


def run_fit(cfg: Any, build: Callable[[], tuple[L.LightningModule, Any, dict]], transcriber: Callable[[L.LightningModule], Any],
            resume: bool = False, overwrite: bool = False, stop_after_steps: Optional[int] = None,
            on_trained: Optional[Callable[[L.LightningModule, Path], None]] = None) -> dict[str, Any]:
    """The run-directory life cycle shared by both methods.

    prepare (or resume) ``cfg.run_dir`` -> seed -> config.yaml + meta.json -> ``build()`` (module, datamodule, info)
    -> Trainer.fit -> last.ckpt -> ``on_trained`` (e.g. save the student) -> evaluate ``cfg.data.test`` with
    ``transcriber(module)`` -> summary.json (last). ``stop_after_steps`` stops early and returns without a summary.
    """
    import json
    import time

    from common.config import save_yaml
    from common.evaluate import EvalConfig, markdown_table, run_evaluation
    from common.io import SUMMARY, atomic_write_json, git_revision, is_complete, prepare_run_dir

    run_dir = Path(cfg.run_dir)
    if resume and is_complete(run_dir):
        return json.loads((run_dir / SUMMARY).read_text())
    ckpt = last_checkpoint(run_dir) if resume else None
    if not resume:
        prepare_run_dir(run_dir, overwrite=overwrite)
    L.seed_everything(cfg.trainer.seed, workers=True)
    save_yaml(cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "meta.json", {"git_revision": git_revision(), "method": cfg.method, "torch": torch.__version__})
    module, dm, info = build()
    trainer = build_trainer(cfg.trainer, run_dir, callbacks=[StopAfterSteps(stop_after_steps)] if stop_after_steps else None)
    t0, c0 = time.time(), time.process_time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    train_s, train_cpu = time.time() - t0, time.process_time() - c0
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    if trainer.global_step < cfg.trainer.max_steps:  # stopped early: resumable, not complete
        return {"method": cfg.method, "steps": trainer.global_step, "stopped_early": True}
    if on_trained is not None and trainer.is_global_zero:
        on_trained(module, run_dir)
    summary: dict[str, Any] = {"method": cfg.method, "steps": trainer.global_step, "train_seconds": round(train_s, 1),
                               "train_cpu_seconds": round(train_cpu, 1), "torch_threads": torch.get_num_threads(),
                               "n_trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad), **info}
    if cfg.data.test and trainer.is_global_zero:
        module.eval()
        ev = EvalConfig(out_dir=str(run_dir / "eval"), model=str(run_dir), sets=list(cfg.data.test), decoding=cfg.decoding,
                        bad_sample_policy=cfg.data.bad_sample_policy)
        res = run_evaluation(ev, overwrite=True, transcriber=transcriber(module))
        summary["sets"] = res["sets"]
        summary["table"] = markdown_table(res, run_dir.name)
    if trainer.is_global_zero:
        atomic_write_json(run_dir / SUMMARY, summary)
    return summary


def method_of(path: str | Path | None, overrides: list[str]) -> str:
    """The ``method`` named by a config file or an override."""
    for o in overrides:
        if o.startswith("method="):
            return o.split("=", 1)[1]
    if path is None:
        raise ValueError("fit needs -c CONFIG (with a 'method:' key)")
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    method = data.get("method") if isinstance(data, dict) else None
    if method not in ("askd_whisper", "ark_asr"):
        raise ValueError(f"config {path}: 'method' must be askd_whisper or ark_asr, got {method!r}")
    return method


def last_checkpoint(run_dir: Path) -> Optional[Path]:
    p = Path(run_dir) / "checkpoints" / "last.ckpt"
    return p if p.is_file() else None
