"""The training sections of an experiment config: ``optim`` and ``trainer`` (with ``trainer.fsdp``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


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
    """full: one consolidated checkpoint that loads under any strategy / world size; sharded (per-rank files) is refused
    at start-up under fsdp / fsdp2 for now (the final evaluation and --resume read one file)."""
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
    strategy: Literal["auto", "ddp", "fsdp", "fsdp2"] = "auto"
    """Distribution strategy (modules never branch on it): ddp (replicas), fsdp (FSDP1, Lightning's FSDPStrategy,
    GPU), fsdp2 (``fully_shard`` per transformer layer through Lightning's ModelParallelStrategy; CPU or GPU;
    docs/scaling.md says how to choose)."""
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
    keep_step_ckpts: Optional[int] = 5
    """How many of those step checkpoints to keep, the newest (None: all)."""
    last_ckpt_every_minutes: Optional[float] = 30.0
    """Rewrite last.ckpt this often during training (None: only at the end, on a signal and every ckpt_every_n_steps),
    so a crash or Ctrl-C loses at most this much work."""
    log_every_n_steps: int = 10
    """Logging interval."""
    seed: int = 0
    """Global seed (weights init, sampling, dropout)."""
    lock_wait_seconds: float = 120.0
    """With --resume, how long to wait for the run directory's lock when another process holds it (a requeued job
    starting while the previous one is still being stopped); then refused in one line. A fresh run never waits."""
    deterministic: bool = False
    """torch's deterministic algorithms for this run (Lightning's ``deterministic``): bitwise-repeatable runs on one
    machine where a default kernel is not (the demo's teacher adaptation); put back as before when the run ends."""
    progress_bar: bool = True
    """Show Lightning's progress bar (only when stdout is a terminal; in a log file, plain progress lines instead)."""
    progress_every_n_steps: int = 50
    """When stdout is not a terminal (SLURM, nohup): one line every this many steps (step, loss, lr, audio s/s, ETA)."""
    slurm_requeue: bool = True
    """Under SLURM: on SIGUSR1 (``#SBATCH --signal=USR1@120``) save last.ckpt and requeue the job."""

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.accumulate_grad_batches < 1:
            raise ValueError("max_steps and accumulate_grad_batches must be >= 1")
        if self.lock_wait_seconds < 0:
            raise ValueError("trainer.lock_wait_seconds must be >= 0")
        if self.keep_step_ckpts is not None and self.keep_step_ckpts < 1:
            raise ValueError("trainer.keep_step_ckpts must be >= 1 (or null: keep all)")
        if self.progress_every_n_steps < 1 or self.log_every_n_steps < 1:
            raise ValueError("trainer.progress_every_n_steps and log_every_n_steps must be >= 1")
        if self.last_ckpt_every_minutes is not None and self.last_ckpt_every_minutes <= 0:
            raise ValueError("trainer.last_ckpt_every_minutes must be > 0 (or null)")
        if self.strategy in ("fsdp", "fsdp2") and self.fsdp.state_dict_type == "sharded":
            raise ValueError(
                "trainer.fsdp.state_dict_type: sharded is not supported yet: a sharded checkpoint is a folder of "
                "per-rank shards, and the run's final evaluation and --resume read checkpoints/last.ckpt as one file; "
                "use full (the default: one file that loads under FSDP2, FSDP1, DDP or one process)"
            )
