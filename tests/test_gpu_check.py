"""The prepared GPU check's CPU-side parts (bench/gpu_check.py): arguments, the one-line refusal without a GPU, the
JSON and the docs/RESULTS.md block. Its measurements run with ``--dims tiny --device cpu`` in the slow tier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402


@pytest.mark.unit
def test_arguments_are_checked():
    assert gpu_check.parse_args([]).dims == "paper"
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cpu"])  # paper dims measure a GPU
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--batch", "0"])
    assert gpu_check.parse_args(["--dims", "tiny", "--device", "cpu"]).device == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu_check.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert p.returncode == 2 and not out.exists()
    err = [line for line in p.stderr.strip().splitlines() if line]
    assert len(err) == 1 and "needs a CUDA GPU" in err[0], p.stderr


@pytest.mark.unit
def test_results_block_reports_figures_and_failures():
    res = {
        "date": "2026-12-01 10:00 UTC",
        "dims": "paper",
        "machine": {"gpu": "NVIDIA H200", "torch": "2.14.1"},
        "parts": {
            "ark_asr": {
                "sft_step_s": 0.5,
                "opd_step_s": 1.5,
                "opd_over_sft": 3.0,
                "opd_phase_shares": {"time_rollout": 0.6},
            },
            "askd_whisper": {"error": "RuntimeError: CUDA out of memory", "traceback": "..."},
        },
    }
    block = gpu_check.results_block(res)
    assert "NVIDIA H200 (paper dims, bf16" in block and "opd_over_sft 3" in block and "time_rollout 0.6" in block
    assert "askd_whisper: FAILED - RuntimeError: CUDA out of memory" in block
    json.loads(json.dumps(res))


@pytest.mark.slow
def test_the_measurements_run_at_tiny_dims_on_cpu(tmp_path):
    out = tmp_path / "gc.json"
    rc = gpu_check.main(
        ["--dims", "tiny", "--device", "cpu", "--batch", "2", "--seconds", "2", "--skip-pytest", "--out", str(out)]
    )
    res = json.loads(out.read_text())
    assert rc == 0 and {"ark_asr", "askd_whisper"} <= set(res["parts"])
    assert res["parts"]["ark_asr"]["opd_step_s"] > 0 and res["parts"]["askd_whisper"]["batched"]["rtfx_student"] > 0
    # the Ark student ran under FSDP2 on a 1-rank gloo mesh: tiny.en's 4 encoder layers + the LM's layer are sharded
    assert res["parts"]["ark_asr"]["strategy"] == "fsdp2 (1 rank, 5 layers fully_shard-ed)"
    assert not torch.distributed.is_initialized()  # the check's process group is torn down
