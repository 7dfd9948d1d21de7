"""Trainer, optimizer and run-directory plumbing shared by both methods (``asr-distill fit``).

A method's config names itself (``method: askd_whisper`` / ``method: ark_asr``) and holds ``run_dir``,
``optim`` and ``trainer`` sections. A run directory holds ``config.yaml``, ``meta.json`` (git revision),
``checkpoints/`` (``last.ckpt`` plus step checkpoints, written atomically by Lightning), TensorBoard logs
under ``tb/``, per-test-set evaluation files and, last, ``summary.json``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

import lightning as L
import torch


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
class FSDPConfig:
    """FSDP settings (``trainer.strategy: fsdp``; GPU only). The student is wrapped at its transformer layers
    (the classes named by each Hugging Face model's ``_no_split_modules``: encoder and decoder layers)."""

    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD"
    """torch FSDP sharding strategy."""
    state_dict_type: Literal["full", "sharded"] = "full"
    """full: one consolidated checkpoint that loads under any strategy / world size; sharded: per-rank files."""
    cpu_offload: bool = False
    """Offload parameters to CPU between uses."""


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
    """Distribution strategy (modules never branch on it)."""
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    """FSDP settings (strategy fsdp)."""
    activation_checkpointing: bool = False
    """Recompute each transformer layer's activations in backward (student layers; FSDP: Lightning's policy)."""
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    """Numeric precision."""
    accumulate_grad_batches: int = 1
    """Gradient accumulation: one optimizer step per this many batches, so the global batch of an optimizer
    step is ``data.batch_seconds * accumulate_grad_batches`` seconds of audio whatever the world size."""
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
    slurm_requeue: bool = True
    """Under SLURM: on SIGUSR1 (``#SBATCH --signal=USR1@120``) save last.ckpt and requeue the job."""

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


def layer_classes(module: torch.nn.Module) -> set[type]:
    """The transformer-layer classes inside ``module``: every Hugging Face model names them in
    ``_no_split_modules`` (WhisperEncoderLayer, WhisperDecoderLayer, Qwen3DecoderLayer, ...)."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return {type(m) for m in module.modules() if type(m).__name__ in names}


class ValidationLog(torch.nn.Module):
    """Validation bookkeeping of both modules: one :class:`~common.metrics.ErrorRate` per dev set (a sub-module, so it
    follows the device; counts synced across ranks), logged per set as the error rate with its summed counts, and a
    few samples of the first dev set to TensorBoard - reference, student and teacher transcripts as a text table, and
    the audio."""

    def __init__(self, dev_names: Sequence[str], n_samples: int = 3) -> None:
        from common.metrics import ErrorRate

        super().__init__()
        self.names = list(dev_names)
        self.metrics = torch.nn.ModuleList([ErrorRate() for _ in self.names])
        self.n = n_samples
        self.samples: list[dict[str, Any]] = []
        self.teacher_texts: dict[str, str] = {}

    def update(self, batch: dict[str, Any], hyps: list[str], dataloader_idx: int = 0) -> None:
        """Score one batch of dev set ``dataloader_idx`` and keep the first few utterances as samples."""
        self.metrics[dataloader_idx].update(hyps, batch["texts"], batch["languages"])
        if dataloader_idx != 0 or len(self.samples) >= self.n:
            return
        audios = batch.get("audios") or [None] * len(hyps)
        for uid, ref, hyp, lang, audio in zip(batch["ids"], batch["texts"], hyps, batch["languages"], audios):
            if len(self.samples) < self.n:
                self.samples.append({"id": uid, "ref": ref, "hyp": hyp, "language": lang, "audio": audio})

    def log(self, module: L.LightningModule) -> None:
        for name, m in zip(self.names, self.metrics):
            r = m.compute()  # counts summed over ranks
            module.log(f"val/{name}/error_rate", r["error_rate"].float())
            for key in ("n_utts", "ref_units", "sub", "del", "ins"):
                module.log(f"val/{name}/{key}", r[key].float())
            m.reset()
        samples, self.samples = self.samples, []
        if not samples or module._trainer is None or not module._trainer.is_global_zero:
            return
        tb = getattr(module.logger, "experiment", None)
        if tb is None or not hasattr(tb, "add_text"):
            return
        teacher = getattr(module, "teacher", None)
        missing = [s for s in samples if s["id"] not in self.teacher_texts and s["audio"] is not None]
        sharded = teacher is not None and any(type(p).__name__ == "DTensor" for p in teacher.model.parameters())
        if teacher is not None and missing and not sharded:  # once per utterance (the teacher is frozen); rank 0 only
            with torch.no_grad():
                gen = teacher.generate(teacher.prepare([s["audio"] for s in missing], [s["language"] for s in missing]),
                                       max_new_tokens=64)
            self.teacher_texts.update({s["id"]: t for s, t in zip(missing, gen.texts)})
        rows = ["| utterance | reference | student | teacher |", "|---|---|---|---|"]
        for s in samples:
            rows.append(f"| {s['id']} | {s['ref']} | {s['hyp']} | {self.teacher_texts.get(s['id'], '-')} |")
        step = module.global_step
        tb.add_text(f"val/{self.names[0] if self.names else 'dev'}/samples", "\n".join(rows), step)
        for i, s in enumerate(samples):
            if s["audio"] is not None:
                tb.add_audio(f"val/audio/{i}", torch.as_tensor(s["audio"]).float()[None], step, sample_rate=16000)


def make_strategy(cfg: TrainerConfig, module: Optional[torch.nn.Module] = None) -> Any:
    """``trainer.strategy`` as a Lightning strategy. FSDP wraps (and optionally checkpoints) each transformer layer."""
    if cfg.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        classes = layer_classes(module) if module is not None else set()
        return FSDPStrategy(auto_wrap_policy=classes or None, sharding_strategy=cfg.fsdp.sharding_strategy,
                            state_dict_type=cfg.fsdp.state_dict_type, cpu_offload=cfg.fsdp.cpu_offload,
                            activation_checkpointing_policy=classes if cfg.activation_checkpointing and classes else None,
                            use_orig_params=True)  # frozen encoder + trainable rest in one unit
    if cfg.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # frozen parameters (encoder) and steps that skip a branch (phase A/B) leave some parameters unused
        return DDPStrategy(find_unused_parameters=True)
    return cfg.strategy


def enable_activation_checkpointing(module: torch.nn.Module) -> int:
    """Non-FSDP activation checkpointing: Hugging Face's per-layer checkpointing on every trainable model."""
    from transformers import PreTrainedModel

    n = 0
    for m in module.modules():
        trainable = any(p.requires_grad for p in m.parameters())
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing and trainable:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            n += 1
        elif not isinstance(m, PreTrainedModel) and hasattr(m, "gradient_checkpointing") and trainable:
            m.gradient_checkpointing = True  # the project's own layer loops (Ark's AudioEncoder)
            n += 1
    return n


@contextlib.contextmanager
def gathered_params(module: torch.nn.Module) -> Iterator[None]:
    """Hold a (possibly FSDP-sharded) model's full weights for a generation loop, so that autoregressive decoding
    all-gathers each layer once per rollout instead of once per generated token. A no-op without FSDP."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover
        yield
        return
    if any(isinstance(m, FSDP) for m in module.modules()):
        with FSDP.summon_full_params(module, recurse=True, writeback=False):
            yield
    else:
        yield


def shard_frozen(model: torch.nn.Module) -> int:
    """Shard a frozen model's transformer layers across the ranks (FSDP2 ``fully_shard``, CPU or GPU): each rank keeps
    1/world of every layer and gathers a layer just for its forward. Embeddings and heads stay replicated, so any
    sub-module (encoder alone, decoder alone) can still be called directly. Returns the number of sharded layers."""
    from torch.distributed.fsdp import fully_shard

    classes = tuple(layer_classes(model))
    layers = [m for m in model.modules() if classes and isinstance(m, classes)]
    for m in layers:
        fully_shard(m, reshard_after_forward=True)
    return len(layers)


class TeacherPlacement(L.Callback):
    """Put the frozen teacher (never a sub-module) where the run needs it: ``teacher.device: auto`` -> this rank's
    device; ``teacher.placement: sharded`` -> layers sharded across the ranks (:func:`shard_frozen`)."""

    def __init__(self, teacher_cfg: Any) -> None:
        self.cfg = teacher_cfg

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        teacher = getattr(pl_module, "teacher", None)
        if teacher is None or self.cfg is None:
            return
        if self.cfg.device == "auto":
            teacher.model.to(trainer.strategy.root_device)
        if self.cfg.placement == "sharded" and trainer.world_size > 1:
            shard_frozen(teacher.model)


class Preempted(SystemExit):
    """Raised after a signal-triggered checkpoint; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        super().__init__(128 + signum)
        self.signum, self.step, self.path = signum, step, path


class PreemptionCheckpoint(L.Callback):
    """SIGTERM or SIGUSR1 -> finish the current optimizer step -> ``last.ckpt`` (atomic) -> exit; ``--resume`` then
    continues to the same final weights as an uninterrupted run.

    SIGTERM goes through Lightning's own handler, which stops every rank after the step (``SIGTERMException``); the
    checkpoint is written here. SIGUSR1 (SLURM's early warning, ``#SBATCH --signal=USR1@120``) is caught here - and,
    under SLURM with auto-requeue, by Lightning too, which requeues the job: the loop stops after the step (every rank,
    the decision is all-reduced), ``run_fit`` writes ``last.ckpt`` and raises :class:`Preempted`. Checkpoints are
    taken after the whole step, module hooks (EMA self-teacher) included, so resuming is exact."""

    SIGNALS = ("SIGUSR1", "SIGUSR2")  # SIGUSR2: submitit's pre-timeout signal in sweeps (its requeue runs after our save)

    def __init__(self, ckpt_path: Path) -> None:
        self.path = Path(ckpt_path)
        self.received: Optional[int] = None
        self.stopped_at: Optional[int] = None
        self.deferred: Optional[Callable[[], None]] = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if os.name == "nt":  # pragma: no cover
            return

        def handler(signum, frame):
            self.received = signum  # acted on after the current step; earlier handlers run then (deferred_handler)

        for name in self.SIGNALS:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)

    def deferred_handler(self) -> Optional[Callable[[], None]]:
        """The handler that was installed before ours for the received signal (Lightning's SLURM requeue, submitit's
        checkpoint-and-requeue), to run once last.ckpt is written."""
        prev = self._previous.get(self.received) if self.received else None
        if callable(prev) and prev not in (signal.SIG_IGN, signal.SIG_DFL):
            return lambda: prev(self.received, None)
        return None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum, prev in self._previous.items():
            signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            trainer.should_stop = True  # the loop ends after this step; run_fit writes last.ckpt and raises Preempted
            self.stopped_at = trainer.global_step
            self.deferred = self.deferred_handler()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)  # Lightning writes through a temporary file: atomic
            if trainer.is_global_zero:
                print(f"SIGTERM at step {trainer.global_step}: checkpoint {self.path}; continue with --resume", flush=True)


def build_trainer(cfg: TrainerConfig, run_dir: Path, callbacks: Optional[list] = None, limit_val_batches: Any = None,
                  module: Optional[torch.nn.Module] = None) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=-1 if cfg.ckpt_every_n_steps else 0,
                           every_n_train_steps=cfg.ckpt_every_n_steps or cfg.max_steps, filename="step{step:07d}",
                           auto_insert_metric_name=False)
    kw: dict[str, Any] = {}
    if cfg.val_every_n_steps:
        kw.update(val_check_interval=cfg.val_every_n_steps, check_val_every_n_epoch=None)
    if limit_val_batches is not None:
        kw["limit_val_batches"] = limit_val_batches
    if SLURMEnvironment.detect():  # srun-launched: one task per device, requeue on SIGUSR1
        kw["plugins"] = [SLURMEnvironment(auto_requeue=cfg.slurm_requeue, requeue_signal=signal.SIGUSR1)]
    if cfg.activation_checkpointing and cfg.strategy != "fsdp" and module is not None:
        enable_activation_checkpointing(module)
    preempt = PreemptionCheckpoint(run_dir / "checkpoints" / "last.ckpt")
    return L.Trainer(
        max_steps=cfg.max_steps, max_epochs=-1, accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=make_strategy(cfg, module), precision=cfg.precision, accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val, log_every_n_steps=cfg.log_every_n_steps, deterministic=cfg.deterministic,
        enable_progress_bar=cfg.progress_bar, use_distributed_sampler=False, default_root_dir=str(run_dir),
        logger=TensorBoardLogger(str(run_dir), name="tb", version=""), callbacks=[ckpt, preempt] + list(callbacks or []),
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
            on_trained: Optional[Callable[[L.LightningModule, Path], None]] = None,
            callbacks: Optional[list] = None) -> dict[str, Any]:
    """The run-directory life cycle shared by both methods.

    prepare (or resume) ``cfg.run_dir`` -> seed -> config.yaml + meta.json -> ``build()`` (module, datamodule, info)
    -> Trainer.fit -> last.ckpt -> ``on_trained`` (e.g. save the student) -> evaluate ``cfg.data.test`` with
    ``transcriber(module)`` on rank 0 -> summary.json (last). ``stop_after_steps`` stops early and returns without a
    summary. ``resume`` continues from ``last.ckpt`` when there is one and starts afresh otherwise (so a requeued
    job can always pass ``--resume``). A SIGTERM/SIGUSR1 during fit leaves ``last.ckpt`` and raises
    :class:`Preempted` / Lightning's ``SIGTERMException``.
    """
    import json
    import time

    from common.config import save_yaml
    from common.io import SUMMARY, atomic_write_json, git_revision, is_complete, prepare_run_dir

    run_dir = Path(cfg.run_dir)
    if resume and is_complete(run_dir):
        return json.loads((run_dir / SUMMARY).read_text())
    ckpt = last_checkpoint(run_dir) if resume else None
    if (not resume or not run_dir.exists()) and launch_rank() == 0:
        prepare_run_dir(run_dir, overwrite=overwrite)
    L.seed_everything(cfg.trainer.seed, workers=True)
    module, dm, info = build()
    cbs = [TeacherPlacement(getattr(cfg, "teacher", None))] + list(callbacks or [])
    if stop_after_steps:
        cbs.append(StopAfterSteps(stop_after_steps))
    trainer = build_trainer(cfg.trainer, run_dir, callbacks=cbs, module=module)
    if trainer.is_global_zero:
        save_yaml(cfg, run_dir / "config.yaml")
        atomic_write_json(run_dir / "meta.json", {"git_revision": git_revision(), "method": cfg.method, "torch": torch.__version__,
                                                  "world_size": trainer.world_size, "resumed_from": str(ckpt) if ckpt else None})
    t0, c0 = time.time(), time.process_time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    train_s, train_cpu = time.time() - t0, time.process_time() - c0
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    preempt = next(c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint))
    if preempt.stopped_at is not None:
        if preempt.deferred is not None:  # e.g. submitit / Lightning requeue the job now that the checkpoint exists
            preempt.deferred()
        raise Preempted(preempt.received or signal.SIGUSR1, trainer.global_step, preempt.path)
    world = trainer.world_size
    _leave_process_group()  # the rest runs on rank 0 alone
    if trainer.global_step < cfg.trainer.max_steps:  # stopped early: resumable, not complete
        return {"method": cfg.method, "steps": trainer.global_step, "stopped_early": True}
    if not trainer.is_global_zero:
        return {"method": cfg.method, "steps": trainer.global_step, "rank": trainer.global_rank}
    if cfg.trainer.strategy == "fsdp":  # the sharded module is unusable outside the trainer: reload the full weights
        module = _reload(build, run_dir / "checkpoints" / "last.ckpt")
    if on_trained is not None:
        on_trained(module, run_dir)
    summary: dict[str, Any] = {"method": cfg.method, "steps": trainer.global_step, "train_seconds": round(train_s, 1),
                               "train_cpu_seconds": round(train_cpu, 1), "torch_threads": torch.get_num_threads(),
                               "world_size": world, "n_trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
                               **info}
    if cfg.data.test:
        summary.update(evaluate_test_sets(cfg, module, transcriber, run_dir))
    atomic_write_json(run_dir / SUMMARY, summary)
    return summary


def evaluate_test_sets(cfg: Any, module: L.LightningModule, transcriber: Callable[[L.LightningModule], Any], run_dir: Path) -> dict:
    """Decode ``cfg.data.test`` with the trained model into ``run_dir/eval`` (per-utterance errors kept)."""
    from common.evaluate import EvalConfig, markdown_table, run_evaluation

    module.eval()
    ev = EvalConfig(out_dir=str(run_dir / "eval"), model=str(run_dir), sets=list(cfg.data.test), decoding=cfg.decoding,
                    bad_sample_policy=cfg.data.bad_sample_policy)
    res = run_evaluation(ev, overwrite=True, transcriber=transcriber(module))
    return {"sets": res["sets"], "table": markdown_table(res, run_dir.name)}


def launch_rank() -> int:
    """This process's global rank as the launcher (torchrun, srun, Lightning) set it, before any process group exists."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _reload(build: Callable[[], tuple[L.LightningModule, Any, dict]], ckpt: Path) -> L.LightningModule:
    module, _, _ = build()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"], strict=False)
    module.on_load_checkpoint(state)
    return module


def method_of(path: str | Path | None, overrides: list[str]) -> str:
    """The ``method`` named by a config file or an override."""
    for o in overrides:
        if o.startswith("method="):
            return o.split("=", 1)[1]
    if path is None:
        raise ValueError("fit needs -c CONFIG (with a 'method:' key)")
    from omegaconf import OmegaConf

    from common.config import _read_with_bases

    data = OmegaConf.to_container(_read_with_bases(Path(path)))  # follows _base_
    method = data.get("method") if isinstance(data, dict) else None
    if method not in ("askd_whisper", "ark_asr"):
        raise ValueError(f"config {path}: 'method' must be askd_whisper or ark_asr, got {method!r}")
    return method


def last_checkpoint(run_dir: Path) -> Optional[Path]:
    p = Path(run_dir) / "checkpoints" / "last.ckpt"
    return p if p.is_file() else None
