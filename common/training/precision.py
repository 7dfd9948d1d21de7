"""Mixed precision outside Lightning's training step: decoding, teacher caches and the demo's choice of precision.

Lightning autocasts the training step for ``trainer.precision: bf16-mixed``; a run that trained so also decodes its
test sets and builds its teacher caches under the same autocast (:func:`autocast_for`), so a run's numbers come from
one precision. The losses upcast their logits to float32 whatever the input dtype (``common.losses``).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast_for(precision: str, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for a ``*-mixed`` precision on ``device``'s type; a null context for ``32-true`` and the
    ``*-true`` precisions (whose parameters already carry the dtype)."""
    dtype = MIXED.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def cpu_has_native_bf16() -> bool:
    """True where this CPU computes bf16 matrix products natively (x86: AVX512-BF16 or AMX, what oneDNN checks):
    bf16 autocast then runs the 30 s Whisper encoder pass 2.5x and an Ark SFT step of the demo 1.2x faster than
    float32 (``bench/precision.py``, docs/RESULTS.md#demo-precision); elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def demo_precision(choice: Literal["auto", "32-true", "bf16-mixed"] = "auto") -> str:
    """The precision of every ``make demo`` stage: ``auto`` is ``bf16-mixed`` on a CPU with native bf16 and
    ``32-true`` elsewhere (the result then depends on the machine; ``results.json`` records which ran)."""
    if choice not in ("auto", "32-true", "bf16-mixed"):
        raise ValueError(f"--precision must be auto, 32-true or bf16-mixed, got {choice!r}")
    if choice != "auto":
        return choice
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


@contextlib.contextmanager
def without_autocast():
    """Float32 inside an autocast region: the log-mel front ends (their STFT and mel products must not round to bf16,
    and Hugging Face's Whisper extractor hands its result to numpy, which has no bf16)."""
    with contextlib.ExitStack() as stack:
        for dev in ("cpu", "cuda"):
            if torch.is_autocast_enabled(dev):
                stack.enter_context(torch.autocast(dev, enabled=False))
        yield
