"""What a person (or a cluster log) sees while a run trains: plain progress lines when stdout is not a terminal, the
learning rate and the gradient norm in TensorBoard."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

import lightning as L
import torch


def is_terminal() -> bool:
    """stdout is an interactive terminal (not SLURM's output file, nohup, a pipe)."""
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


class ProgressLines(L.Callback):
    """Every ``every`` optimizer steps, on rank 0, one plain line (a progress bar in a log file is unreadable):

    step 1200/40000 (3.0 %) | loss 1.234 | lr 9.87e-05 | 412.3 audio s/s | elapsed 0:52:10 | ETA 1 d 4:07:33
    """

    def __init__(self, every: int, max_steps: int) -> None:
        self.every, self.max_steps = every, max_steps
        self._t0: Optional[float] = None
        self._step0 = 0
        self._audio = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._step0, self._audio = time.time(), trainer.global_step, 0.0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._audio += float(sum(batch.get("durations") or [])) * trainer.world_size  # every rank's share
        step = trainer.global_step
        if not trainer.is_global_zero or step == 0 or step % self.every or self._t0 is None:
            return
        done = max(1, step - self._step0)
        elapsed = time.time() - self._t0
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        eta = elapsed / done * max(0, self.max_steps - step)
        loss_s = f"{float(loss):.4f}" if isinstance(loss, torch.Tensor) else "-"
        print(
            f"step {step}/{self.max_steps} ({100 * step / self.max_steps:.1f} %) | loss {loss_s} | lr {lr:.3g} | "
            f"{self._audio / max(elapsed, 1e-9):.1f} audio s/s | elapsed {_hms(elapsed)} | ETA {_hms(eta)}",
            flush=True,
        )


class GradNormLog(L.Callback):
    """The total L2 norm of the gradients before each optimizer step (after unscaling, before clipping), logged as
    ``train/grad_norm`` every ``log_every_n_steps``."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if trainer.global_step % self.every:
            return
        from common.training.strategy import grad_norm

        params = [p for p in pl_module.parameters() if p.grad is not None]
        if params:  # sharded (FSDP2) or not
            pl_module.log("train/grad_norm", grad_norm(params), batch_size=1)


def _hms(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d} d " if d else "") + f"{h}:{m:02d}:{s:02d}"
