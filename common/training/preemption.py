"""Signals and early stops: SIGTERM / SIGUSR1 / SIGUSR2 -> finish the step -> ``last.ckpt`` -> exit; resumable."""

from __future__ import annotations

import os
import signal
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO


class Preempted(SystemExit):
    """Raised after a signal-triggered checkpoint; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        super().__init__(128 + signum)
        self.signum, self.step, self.path = signum, step, path


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the checkpoint's own folder, fsynced, then renamed over the target:
    a full disk or a kill mid-write leaves the previous checkpoint intact (Lightning's own writer streams into the
    final file, so a failed save truncates it), and the failure is one line naming the file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:

        import torch

        from common.io import atomic_open

        try:
            with atomic_open(Path(path)) as f:
                torch.save(checkpoint, f)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError chained from ENOSPC
            raise CheckpointError(
                f"could not write checkpoint {path} ({_reason(err)}); the previous one is kept"
            ) from None

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        return load_checkpoint(Path(path))


def _reason(err: BaseException) -> str:
    """The OS-level reason of an error (a chained OSError's strerror, e.g. 'No space left on device'), else its first
    line."""
    e: Optional[BaseException] = err
    while e is not None:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        e = e.__cause__ or e.__context__
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A training checkpoint the user points at, read with ``weights_only=True``: tensors and plain data only, so a
    file carrying a pickle payload is refused in one line and never executed. ``mmap``: tensors are read lazily."""
    import pickle

    import torch

    check_checkpoint(Path(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data, refused (loading it could run "
            f"code): {first[:160]}"
        ) from None
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"cannot read checkpoint {path} ({_reason(err)})") from None


def check_checkpoint(path: Path) -> Path:
    """A checkpoint that ``--resume`` can load: a complete torch zip archive (a truncated file has no central
    directory); otherwise one line naming the file."""

    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt (not a complete torch archive); move it away to restart "
            f"from step 0, or copy a step checkpoint from {Path(path).parent} over it"
        )
    return path


class PreemptionCheckpoint(L.Callback):
    """SIGTERM, SIGUSR1/2 or Ctrl-C (SIGINT) -> finish the current optimizer step -> ``last.ckpt`` (atomic) -> exit;
    ``--resume`` then continues to the same final weights as an uninterrupted run. A second Ctrl-C stops at once.

    SIGTERM goes through Lightning's own handler, which stops every rank after the step (``SIGTERMException``); the
    checkpoint is written here. SIGUSR1 (SLURM's early warning, ``#SBATCH --signal=USR1@120``) is caught here - and,
    under SLURM with auto-requeue, by Lightning too, which requeues the job: the loop stops after the step (every rank,
    the decision is all-reduced), ``run_fit`` writes ``last.ckpt`` and raises :class:`Preempted`. Checkpoints are
    taken after the whole step, module hooks (EMA self-teacher) included, so resuming is exact."""

    # SIGUSR2: submitit's pre-timeout signal in sweeps (its requeue runs after our save); SIGINT: Ctrl-C
    SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGINT")

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
            if signum == signal.SIGINT and self.received == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the step
            self.received = signum  # acted on after the current step; earlier handlers run then (deferred_handler)
            if signum == signal.SIGINT:
                print("\nCtrl-C: finishing this step, then writing last.ckpt (Ctrl-C again to stop now)", flush=True)

        for name in self.SIGNALS:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)

    def deferred_handler(self) -> Optional[Callable[[], None]]:
        """The handler that was installed before ours for the received signal (Lightning's SLURM requeue, submitit's
        checkpoint-and-requeue), to run once last.ckpt is written."""
        prev = self._previous.get(self.received) if self.received else None
        if self.received == signal.SIGINT:  # Python's own SIGINT handler would only raise KeyboardInterrupt
            return None
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
                print(
                    f"SIGTERM at step {trainer.global_step}: checkpoint {self.path}; continue with --resume", flush=True
                )


class StopAfterSteps(L.Callback):
    """Stop cleanly after ``n`` optimizer steps (used to test resumption; a preempted run looks the same)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.n:
            trainer.should_stop = True
