"""AdamW with warm-up and a decay schedule (``optim`` section)."""

from __future__ import annotations

import math
from typing import Any

import torch

from common.training.config import OptimConfig


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
    from torch.distributed.tensor import DTensor

    trainable = [p for p in params if p.requires_grad]
    mixed = any(isinstance(p, DTensor) for p in trainable)  # FSDP2: sharded layers beside replicated parameters
    opt = torch.optim.AdamW(
        trainable, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, foreach=False if mixed else None
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
