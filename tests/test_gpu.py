"""GPU tier (``pytest -m gpu``): FSDP and bf16 on one CUDA device; skipped without one.

Lightning's FSDP strategy refuses the CPU accelerator, so these run only where a GPU is present. They check that
both modules train unchanged under FSDP (layer wrapping, OPD rollouts through gathered weights, bf16-mixed) and that
the consolidated FSDP checkpoint loads back into a plain single-process CPU module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ark_cfg, askd_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "activation_checkpointing": True}


def _reload_on_cpu(module_cls_build, ckpt: Path) -> None:
    module, _, _ = module_cls_build()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    missing, unexpected = module.load_state_dict(state["state_dict"], strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("student.")]


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_ark_opd_on_gpu(tiny_corpus, tmp_path, strategy):
    from ark_asr.run import build, fit

    sft = ark_cfg(tiny_corpus, tmp_path / "sft", "sft", trainer={**GPU, "max_steps": 2})
    fit(sft)
    opd = ark_cfg(
        tiny_corpus,
        tmp_path / "opd",
        "opd",
        model={"init_from": str(tmp_path / "sft")},
        teacher={"kind": "whisper", "name_or_path": "bundled:tiny.en", "device": "auto", "dtype": "bfloat16"},
        trainer={**GPU, "strategy": strategy, "max_steps": 2},
    )
    s = fit(opd)
    assert s["steps"] == 2 and "en_test" in s["sets"]
    _reload_on_cpu(lambda: build(opd), tmp_path / "opd" / "checkpoints" / "last.ckpt")


def test_askd_fsdp_on_gpu(tiny_corpus, tmp_path):
    from askd_whisper.run import build, fit

    cfg = askd_cfg(
        tiny_corpus,
        tmp_path / "askd",
        trainer={**GPU, "strategy": "fsdp", "max_steps": 4},
        teacher={"kind": "whisper", "name_or_path": "bundled:tiny.en", "device": "auto"},
    )
    assert fit(cfg)["steps"] == 4
    _reload_on_cpu(lambda: build(cfg), tmp_path / "askd" / "checkpoints" / "last.ckpt")
