"""The prepared GPU check (``make gpu-check``): the first thing to run on any GPU machine, nothing downloaded.

1. ``pytest -m gpu`` (FSDP / DDP and bf16 on one device: tests/test_gpu.py);
2. with random weights at paper dimensions in bf16 (``--dims paper``): an Ark-ASR SFT step and an OPD step (time and
   peak memory; the student is Whisper-large-v3's encoder + a Qwen2.5-0.5B-architecture LM, the teacher Qwen3-ASR-1.7B's
   architecture), OPD utterances/s, rollout tokens/s and teacher-scoring tokens/s from the step's own phase timings;
   an ASKD-Whisper KD step (large-v3 teacher, 2-layer student); ASKD latency at batch 1 and batched throughput (RTFx).
3. ``gpu_check.json`` (every figure, the machine, the date) and a block for docs/RESULTS.md on stdout.

Each measurement runs on its own: one that fails is recorded with its error and the rest still run. The Ark-ASR steps
run in one process on one GPU with the student under FSDP2 (``--ark-strategy fsdp2``, the default: each transformer
layer ``fully_shard``-ed on a 1-rank mesh with pure bf16 parameters, as ``trainer.strategy: fsdp2`` +
``precision: bf16-true`` does; ``none`` for the plain module); the ``gpu`` tests cover Lightning's FSDP1.
``--dims tiny --device cpu`` runs the same code at tiny dimensions on a CPU, FSDP2 on a gloo group (a slow test does,
so this script cannot rot where no GPU is lent).

Usage: python bench/gpu_check.py [--out gpu_check.json] [--dims paper|tiny] [--device cuda|cpu] [--batch 16]
       [--skip-pytest] [--ark-strategy fsdp2|none]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json", help="where the figures go (JSON)")
    ap.add_argument("--dims", choices=["paper", "tiny"], default="paper", help="model dimensions (random weights)")
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (only with --dims tiny: a smoke run)")
    ap.add_argument("--batch", type=int, default=16, help="utterances per step / batched-throughput batch")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each synthetic utterance")
    ap.add_argument("--skip-pytest", action="store_true", help="skip `pytest -m gpu`")
    ap.add_argument(
        "--ark-strategy", choices=["fsdp2", "none"], default="fsdp2", help="the Ark student's sharding (1 rank)"
    )
    a = ap.parse_args(argv)
    if a.batch < 1 or a.seconds <= 0:
        ap.error("--batch must be >= 1 and --seconds > 0")
    if a.device != "cuda" and a.dims == "paper":
        ap.error("--dims paper measures a GPU: use --device cuda (or --dims tiny for a CPU smoke run)")
    return a


def require_cuda(device: str) -> str | None:
    """One line when the device asked for is a GPU and there is none (None when fine)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "gpu-check needs a CUDA GPU: none is visible here (torch.cuda.is_available() is False); nothing measured"
    return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, repeats: int = 3) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def peak_mb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def synthetic_manifest(out: Path, n: int, seconds: float) -> Path:
    """``n`` clips of noise with short texts (timing needs audio of the right length, not speech)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    words = "the of and to in is was that for on with as his by at from her this".split()
    rows = []
    for i in range(n):
        p = out / f"clip{i:03d}.flac"
        sf.write(p, (0.05 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
        rows.append({"audio_filepath": str(p), "text": " ".join(rng.choice(words, 12)), "language": "en"})
    m = out / "manifest.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return m


@contextmanager
def one_rank_mesh(device: str) -> Iterator[Any]:
    """A 1-process group (nccl on a GPU, gloo on a CPU) and its data-parallel device mesh, as Lightning's
    ``ModelParallelStrategy`` gives a LightningModule; torn down afterwards (left alone if a group already exists)."""
    import os
    import socket

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    mine = not dist.is_initialized()
    if mine:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", rank=0, world_size=1)
    try:
        yield init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (1,), mesh_dim_names=("data_parallel",))
    finally:
        if mine:
            dist.destroy_process_group()


def ark_steps(a: argparse.Namespace, manifest: Path, run_dir: Path) -> dict[str, Any]:
    """One Ark-ASR SFT step and one OPD step (forward + backward), bf16 on the device, the student under FSDP2
    (``--ark-strategy fsdp2``) or plain."""
    if a.ark_strategy == "fsdp2":
        with one_rank_mesh(a.device) as mesh:
            return _ark_steps(a, manifest, run_dir, mesh)
    return _ark_steps(a, manifest, run_dir, None)


def _ark_steps(a: argparse.Namespace, manifest: Path, run_dir: Path, mesh: Any) -> dict[str, Any]:
    from ark_asr.config import ArkConfig
    from ark_asr.run import build
    from common.config import from_dict

    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    if a.dims == "paper":
        from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

        from common.teachers.qwen3_asr import Qwen3ASRTeacher, build_qwen3_asr_tokenizer

        model = {"encoder": "preset:whisper-large-v3", "llm": "preset:qwen2-0.5b", "tokenizer": "qwen3"}
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(a.device):
                tm = Qwen3ASRForConditionalGeneration(Qwen3ASRConfig(audio_config={"output_dim": 2048}))
        finally:
            torch.set_default_dtype(prev)
        teacher = Qwen3ASRTeacher(tm, build_qwen3_asr_tokenizer(), device=a.device, dtype=dtype)
        k = 32
    else:
        from common.teachers.whisper_teacher import WhisperTeacher

        model = {
            "encoder": "bundled:tiny.en",
            "encoder_positions": "absolute",
            "llm": "config",
            "llm_config": {
                "model_type": "qwen2",
                "hidden_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "intermediate_size": 128,
                "tie_word_embeddings": True,
            },
            "tokenizer": "whisper",
            "transcript_prefix": " ",
        }
        teacher = WhisperTeacher.from_pretrained("bundled:tiny.en", a.device, dtype)
        k = 8
    cfg = from_dict(
        ArkConfig,
        {
            "run_dir": str(run_dir),
            "stage": "opd",
            "model": model,
            "teacher": {"kind": "whisper", "name_or_path": "bundled:tiny.en"},  # the object above is used
            "opd": {"top_k": k, "max_new_tokens": 64},
            "data": {
                "train": [str(manifest)],
                "batch_seconds": a.batch * a.seconds + 1,
                "max_cuts": a.batch,
                "num_buckets": 2,
                "shuffle": False,
            },
        },
    )
    module, dm, _ = build(cfg, teacher)
    module.student.to(a.device, dtype)  # pure bf16 parameters on a GPU (no fp32 master copy)
    sharded = 0
    if mesh is not None:
        from torch.distributed.fsdp import FSDPModule

        module._device_mesh = mesh  # what ModelParallelStrategy sets; configure_model then shards the student
        module.configure_model()
        sharded = sum(isinstance(m, FSDPModule) for m in module.student.modules())
    batch = next(iter(dm.train_dataloader()))
    params = [p for p in module.student.parameters() if p.requires_grad]

    def step(fn):
        def run():
            loss, logs = fn(batch)
            loss.backward()
            for p in params:
                p.grad = None
            return logs

        return run

    out: dict[str, Any] = {
        "strategy": f"fsdp2 (1 rank, {sharded} layers fully_shard-ed)" if mesh is not None else "none",
        "batch_utterances": len(batch["ids"]),
        "utterance_seconds": a.seconds,
    }
    _reset_peak(a.device)
    out["sft_step_s"], _ = timed(step(module.ce_step), a.device)
    out["sft_peak_mb"] = peak_mb(a.device)
    _reset_peak(a.device)
    out["opd_step_s"], logs = timed(step(module.opd_step), a.device)
    out["opd_peak_mb"] = peak_mb(a.device)
    n = len(batch["ids"])
    roll_tokens = float(logs["rollout_len"]) * n
    out.update(
        opd_over_sft=out["opd_step_s"] / out["sft_step_s"],
        opd_utterances_per_s=n / out["opd_step_s"],
        rollout_tokens_per_s=roll_tokens / max(float(logs["time_rollout"]), 1e-9),
        teacher_scoring_tokens_per_s=roll_tokens / max(float(logs["time_teacher"]), 1e-9),
        opd_phase_shares={
            k: float(logs[k]) / out["opd_step_s"] for k in ("time_rollout", "time_teacher", "time_rescore_loss")
        },
    )
    return out


def askd(a: argparse.Namespace) -> dict[str, Any]:
    """An ASKD-Whisper KD step (online teacher, 2-layer student) and latency: batch 1 and batched (RTFx)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from askd_whisper.student import build_student
    from common.latency import measure

    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    if a.dims == "paper":
        from ark_asr.model import PRESETS

        dims = {**PRESETS["whisper-large-v3"], "decoder_layers": 32}
    else:
        dims = dict(
            d_model=64,
            encoder_layers=2,
            decoder_layers=4,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            num_mel_bins=80,
        )
    ids_ = dict(decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257, bos_token_id=50257)
    wcfg = WhisperConfig(**{**dims, "vocab_size": 51866, **ids_})
    with torch.device(a.device):
        teacher = WhisperForConditionalGeneration(wcfg).to(dtype).eval()
    for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
        setattr(teacher.generation_config, k, ids_[k])
    student = build_student(teacher, 2).to(a.device, dtype)
    B, T = a.batch, 64
    feats = torch.randn(B, wcfg.num_mel_bins, 3000, device=a.device, dtype=dtype)
    ids = torch.randint(0, 1000, (B, T), device=a.device)

    def kd_step():
        with torch.no_grad():
            enc = teacher.model.encoder(feats).last_hidden_state
            t = teacher.model.decoder(input_ids=ids, encoder_hidden_states=enc).last_hidden_state
            t_logits = teacher.proj_out(t)
        s_logits = student.proj_out(student.model.decoder(input_ids=ids, encoder_hidden_states=enc).last_hidden_state)
        loss = torch.nn.functional.kl_div(
            s_logits.float().log_softmax(-1), t_logits.float().log_softmax(-1), log_target=True, reduction="batchmean"
        )
        loss.backward()
        student.zero_grad(set_to_none=True)

    out: dict[str, Any] = {"kd_batch": B}
    _reset_peak(a.device)
    out["kd_step_s"], _ = timed(kd_step, a.device)
    out["kd_peak_mb"] = peak_mb(a.device)
    with torch.no_grad():
        one = measure(teacher, student.eval(), feats[:1], n_tokens=32, repeats=3)
        many = measure(teacher, student, feats, n_tokens=32, repeats=2)
    audio_s = 30.0
    out.update(
        latency_batch1={**one, "ratio": one["teacher"] / one["student"]},
        batched={
            **many,
            "batch": B,
            "ratio": many["teacher"] / many["student"],
            "rtfx_teacher": B * audio_s / many["teacher"],
            "rtfx_student": B * audio_s / many["student"],
        },
    )
    return out


def run_pytest_gpu() -> dict[str, Any]:
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    tail = (p.stdout.strip().splitlines() or [""])[-1]
    return {"returncode": p.returncode, "summary": tail, "seconds": round(time.time() - t0, 1)}


def results_block(res: dict[str, Any]) -> str:
    """The docs/RESULTS.md block of a check (what `make gpu-check` prints)."""
    lines = [
        f"## {res['date']}: `make gpu-check` on {res['machine']['gpu']} ({res['dims']} dims, bf16, random weights)",
        "",
    ]
    for name, part in res["parts"].items():
        if "error" in part:
            lines.append(f"- {name}: FAILED - {part['error']}")
            continue
        flat = ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in part.items() if not isinstance(v, dict)
        )
        lines.append(f"- {name}: {flat}")
        for k, v in part.items():
            if isinstance(v, dict):
                lines.append(
                    f"  - {k}: "
                    + ", ".join(f"{kk} {vv:.3g}" if isinstance(vv, float) else f"{kk} {vv}" for kk, vv in v.items())
                )
    lines.append(f"\nCommand: `make gpu-check` (python bench/gpu_check.py); torch {res['machine']['torch']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    why = require_cuda(a.device)
    if why:
        print(why, file=sys.stderr)
        return 2
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"CPU ({platform.processor() or 'cpu'})"
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "dims": a.dims,
        "machine": {"gpu": gpu, "torch": torch.__version__, "python": platform.python_version()},
        "parts": {},
    }
    parts: list[tuple[str, Callable[[], dict]]] = []
    if not a.skip_pytest:
        parts.append(("pytest -m gpu", run_pytest_gpu))
    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthetic_manifest(Path(tmp), a.batch, a.seconds)
        parts += [("ark_asr", lambda: ark_steps(a, manifest, Path(tmp) / "run")), ("askd_whisper", lambda: askd(a))]
        for name, fn in parts:
            t0 = time.time()
            try:
                res["parts"][name] = {**fn(), "wall_s": round(time.time() - t0, 1)}
            except Exception as err:  # one failed measurement does not hide the others
                res["parts"][name] = {
                    "error": f"{type(err).__name__}: {err}".splitlines()[0][:300],
                    "traceback": traceback.format_exc()[-2000:],
                }
            print(f"[gpu-check] {name}: {'failed' if 'error' in res['parts'][name] else 'done'}", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=2, default=float))
    print(results_block(res))
    return 1 if any("error" in p or p.get("returncode") for p in res["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
