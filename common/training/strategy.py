"""Distribution and memory: the Lightning strategy from ``trainer.strategy``, activation checkpointing, FSDP
parameter gathering for generation, sharding and placing the frozen teacher. Modules never branch on the strategy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

import lightning as L
import torch

from common.training.config import TrainerConfig


def layer_classes(module: torch.nn.Module) -> set[type]:
    """The transformer-layer classes inside ``module``: every Hugging Face model names them in
    ``_no_split_modules`` (WhisperEncoderLayer, WhisperDecoderLayer, Qwen3DecoderLayer, ...)."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return {type(m) for m in module.modules() if type(m).__name__ in names}


def make_strategy(cfg: TrainerConfig, module: Optional[torch.nn.Module] = None) -> Any:
    """``trainer.strategy`` as a Lightning strategy. FSDP wraps (and optionally checkpoints) each transformer layer."""
    if cfg.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        classes = layer_classes(module) if module is not None else set()
        return FSDPStrategy(
            auto_wrap_policy=classes or None,
            sharding_strategy=cfg.fsdp.sharding_strategy,
            state_dict_type=cfg.fsdp.state_dict_type,
            cpu_offload=cfg.fsdp.cpu_offload,
            activation_checkpointing_policy=classes if cfg.activation_checkpointing and classes else None,
            use_orig_params=True,
        )  # frozen encoder + trainable rest in one unit
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
            if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
                m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
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
