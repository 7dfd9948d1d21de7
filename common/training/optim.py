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


def adamw_kernel(params: list) -> dict[str, bool]:
    """AdamW's implementation for these parameters: ``fused`` (one kernel over all of them) where every parameter is a
    plain floating tensor on one CPU or CUDA device - on a CPU torch's default is a Python loop over the tensors, 6-7x
    slower on a demo student's 27M parameters (``bench/optim_step.py``) for the same update to float rounding
    (tested). FSDP2's DTensors keep torch's default, and the loop (``foreach=False``) where they sit beside
    replicated plain parameters."""
    from torch.distributed.tensor import DTensor

    dtensors = [isinstance(p, DTensor) for p in params]
    if any(dtensors):
        return {} if all(dtensors) else {"foreach": False}
    devices = {p.device for p in params}
    if params and len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda"):
        if all(p.is_floating_point() for p in params):
            return {"fused": True}
    return {}


def configure_optim(params, cfg: OptimConfig, total_steps: int) -> dict[str, Any]:
    trainable = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(
        trainable, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **adamw_kernel(trainable)
    )
    # A fused AdamW says it unscales fp16 gradients inside its kernel; Lightning's mixed-precision plugins then refuse
    # gradient clipping (trainer.gradient_clip_val) outright, bf16-mixed included. Declining that lets the scaler
    # unscale before the step (and clip): the fused update is the same, only the fp16 unscale is not fused.
    if opt.defaults.get("fused"):
        opt._step_supports_amp_scaling = False
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
