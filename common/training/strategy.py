"""Distribution and memory: the Lightning strategy from ``trainer.strategy``, activation checkpointing, FSDP
parameter gathering for generation, sharding and placing the frozen teacher. Modules never branch on the strategy."""

from __future__ import annotations

import contextlib
import copy
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
    """``trainer.strategy`` as a Lightning strategy. FSDP wraps (and optionally checkpoints) each transformer layer;
    FSDP2 (``fsdp2``) is Lightning's ``ModelParallelStrategy`` as pure data parallelism (one mesh dimension over all
    ranks), the layers sharded by :func:`shard_student` from the modules' ``configure_model``, full-state
    checkpoints (one file, loadable under any strategy) unless ``trainer.fsdp.state_dict_type: sharded``."""
    if cfg.strategy == "fsdp2":
        return _fsdp2_strategy()(
            data_parallel_size=cfg.devices * cfg.num_nodes,
            tensor_parallel_size=1,
            save_distributed_checkpoint=cfg.fsdp.state_dict_type == "sharded",
        )
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


def _fsdp2_strategy() -> type:
    """Lightning's ModelParallelStrategy, reading a full-state checkpoint (one file, from FSDP2, FSDP1, DDP or one
    process: optimizer state keyed by parameter index) with ``weights_only=True`` always: the weights strictly, the
    AdamW state of each sharded parameter cut into this rank's shard. A trainable parameter that never received a
    gradient has no AdamW state in any checkpoint and starts without one again, as AdamW itself does."""
    from pathlib import Path

    from lightning.fabric.strategies.model_parallel import _is_full_checkpoint, _load_raw_module_state
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.tensor import distribute_tensor

    class FSDP2Strategy(ModelParallelStrategy):
        def load_checkpoint(self, checkpoint_path: Any, weights_only: Optional[bool] = None) -> dict[str, Any]:
            path = Path(self.broadcast(checkpoint_path))
            if not _is_full_checkpoint(path):  # trainer.fsdp.state_dict_type: sharded
                return super().load_checkpoint(checkpoint_path, weights_only=True)
            ck = torch.load(path, mmap=True, map_location="cpu", weights_only=True)
            _load_raw_module_state(ck.pop("state_dict"), self.model, strict=self.lightning_module.strict_loading)
            for opt, saved in zip(self.optimizers, ck.get("optimizer_states", [])):
                params = [p for g in opt.param_groups for p in g["params"]]
                state = {}
                for i, entry in saved["state"].items():
                    p = params[int(i)]
                    state[int(i)] = {
                        k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                        if _is_sharded(p) and torch.is_tensor(v) and v.shape == p.shape
                        else v
                        for k, v in entry.items()
                    }
                opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
            return ck

    return FSDP2Strategy


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
    """Hold a (possibly FSDP- or FSDP2-sharded) model's full weights for a generation loop, so that autoregressive
    decoding all-gathers each layer once per rollout instead of once per generated token. Inside, the model runs no
    collective at all, so ranks may decode different numbers of tokens (uneven rollouts never hang). A no-op
    without sharding."""
    try:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover
        yield
        return
    if any(isinstance(m, FSDP) for m in module.modules()):
        with FSDP.summon_full_params(module, recurse=True, writeback=False):
            yield
        return
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for m in units:  # FSDP2: gather once, keep gathered through every forward of the loop
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(True)


# -- FSDP2 (trainer.strategy: fsdp2) ---------------------------------------------------------------------------------
def shard_student(pl_module: L.LightningModule, model: torch.nn.Module) -> int:
    """FSDP2 for a student (called from the modules' ``configure_model``; a no-op unless the strategy is ``fsdp2``):
    each transformer layer (the classes of :func:`layer_classes`) is ``fully_shard``-ed over the data-parallel mesh
    and re-gathered for its own forward and backward, its gradients reduce-scattered; the rest (embeddings, heads,
    norms, adapters, front ends: small, and called directly by the training steps) stays replicated, its gradients
    averaged across the ranks by :class:`FSDP2Gradients`. ``trainer.precision: bf16-true`` keeps the parameters in
    bf16 with no fp32 copy (the authors' option), ``bf16-mixed`` autocasts fp32 parameters. Returns the number of
    sharded layers."""
    mesh = getattr(pl_module, "_device_mesh", None)
    if mesh is None:
        return 0
    from torch.distributed.fsdp import FSDPModule, fully_shard

    classes = tuple(layer_classes(model))
    layers = [m for m in model.modules() if classes and isinstance(m, classes) and not isinstance(m, FSDPModule)]
    for m in layers:  # each layer its own unit: any sub-module of the student can still be called directly
        fully_shard(m, mesh=mesh["data_parallel"], reshard_after_forward=True)
    return len(layers)


def _is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP2-sharded) parameter: gathered from the ranks (a collective) or itself."""
    return t.full_tensor() if _is_sharded(t) else t


def unsharded_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain copy of ``model`` (frozen snapshots such as ASKD's self-teacher): ``deepcopy``, or under FSDP2 a fresh
    model of the same class and config holding the gathered full weights (a collective: every rank calls it at the
    same step). The copy is replicated on every rank."""
    if not any(_is_sharded(p) for p in model.parameters()):
        return copy.deepcopy(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    p = next(model.parameters())
    twin = model.__class__(copy.deepcopy(model.config)).to(device=p.device, dtype=p.dtype)
    twin.load_state_dict({k: full_tensor(v) for k, v in full.items()}, strict=False)
    return twin


def grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients of ``params``, sharded (FSDP2's DTensors: each rank holds a shard, the
    squares summed across ranks) or not (replicated: counted once)."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    local = [g.to_local() for g in grads if _is_sharded(g)]
    sq_sharded = torch.stack([g.detach().float().pow(2).sum() for g in local]).sum() if local else torch.zeros(())
    if local and dist.is_initialized():
        dist.all_reduce(sq_sharded)
    plain = [g.detach().float().pow(2).sum() for g in grads if not _is_sharded(g)]
    return (sq_sharded + (torch.stack(plain).sum() if plain else 0.0)).sqrt()


class FSDP2Gradients(L.Callback):
    """Under FSDP2, before each optimizer step: the replicated parameters' gradients averaged across the ranks (as
    DDP does; a parameter no rank used keeps no gradient, one that some ranks used gets zeros elsewhere), then every
    gradient clipped to ``clip`` by the global norm (:func:`grad_norm`) - Lightning's own clipping cannot mix DTensor
    and plain gradients."""

    def __init__(self, clip: Optional[float]) -> None:
        self.clip = clip

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        import torch.distributed as dist

        params = [p for g in optimizer.param_groups for p in g["params"]]
        plain = [p for p in params if not _is_sharded(p)]
        if plain and dist.is_initialized() and dist.get_world_size() > 1:
            used = torch.tensor([p.grad is not None for p in plain], dtype=torch.int32)
            dist.all_reduce(used, op=dist.ReduceOp.MAX)
            synced = [p for p, u in zip(plain, used.tolist()) if u]
            for p in synced:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            if synced:  # one flat buffer: one collective
                flat = torch.cat([p.grad.reshape(-1) for p in synced]) / dist.get_world_size()
                dist.all_reduce(flat)
                for p, g in zip(synced, flat.split([p.numel() for p in synced])):
                    p.grad.copy_(g.view_as(p.grad))
        if self.clip:
            total = grad_norm(params)
            coef = (self.clip / (total + 1e-6)).clamp(max=1.0)
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(coef.to(p.grad.dtype) if not _is_sharded(p.grad) else coef.item())


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
