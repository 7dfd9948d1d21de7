"""Training shared by both methods, one concern per module:

- :mod:`~common.training.config`      ``optim`` / ``trainer`` config sections
- :mod:`~common.training.optim`       AdamW + warm-up/decay schedule
- :mod:`~common.training.strategy`    DDP/FSDP/FSDP2 strategy, activation checkpointing, teacher placement and sharding
- :mod:`~common.training.preemption`  signal-triggered checkpoints, early stops
- :mod:`~common.training.validation`  dev-set error rates and TensorBoard samples
- :mod:`~common.training.trainer`     the Lightning Trainer of a run directory
- :mod:`~common.training.fit`         the run-directory life cycle (``run_fit``)
"""

from common.training.config import FSDPConfig, OptimConfig, TrainerConfig
from common.training.fit import ExperimentConfig, evaluate_test_sets, last_checkpoint, launch_rank, run_fit
from common.training.optim import configure_optim, lr_lambda
from common.training.preemption import Preempted, PreemptionCheckpoint, StopAfterSteps
from common.training.strategy import (
    FSDP2Gradients,
    TeacherPlacement,
    enable_activation_checkpointing,
    full_tensor,
    gathered_params,
    grad_norm,
    layer_classes,
    make_strategy,
    shard_frozen,
    shard_student,
    unsharded_copy,
)
from common.training.trainer import build_trainer
from common.training.validation import TrainSkips, ValidationLog

__all__ = [
    "FSDPConfig",
    "OptimConfig",
    "TrainerConfig",
    "ExperimentConfig",
    "evaluate_test_sets",
    "last_checkpoint",
    "launch_rank",
    "run_fit",
    "configure_optim",
    "lr_lambda",
    "Preempted",
    "PreemptionCheckpoint",
    "StopAfterSteps",
    "FSDP2Gradients",
    "full_tensor",
    "grad_norm",
    "shard_student",
    "unsharded_copy",
    "TeacherPlacement",
    "enable_activation_checkpointing",
    "gathered_params",
    "layer_classes",
    "make_strategy",
    "shard_frozen",
    "build_trainer",
    "TrainSkips",
    "ValidationLog",
]
