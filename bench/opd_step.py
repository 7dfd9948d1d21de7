"""Time split of one Ark-ASR OPD step (rollout, teacher scoring, student re-scoring + loss, backward) and the
OPD-step / SFT-step ratio, on the tiny CPU config, same batches, alternating, medians over repeats, one process;
then the same OPD steps with the teacher's encoder states already in ``opd.teacher_encoder_cache_mb``'s cache (a
later epoch of a small corpus, as in ``make demo``); then (``--qwen3-asr``, the default) the same steps with a teacher
of the paper's kind: a Qwen3-ASR-architecture model (random weights) whose audio encoder and LM have tiny.en's
encoder / decoder sizes (4 layers, d 384) - it encodes the audio at its own length, where Whisper pads every clip to
its 30 s window - which says how much of the ratio is the Whisper teacher's window. It also times the Whisper
teacher's encoder pass alone: an exact first-epoch OPD step holds that pass and at least an SFT step's work (the
re-score and its backward), so 1 + (encoder pass / SFT step) bounds the first-epoch ratio from below.

The student is the tiny SFT result (runs/ark_asr/tiny/sft/student) when it exists (a trained student stops its
rollouts; a random one runs to the length limit), else a fresh one from configs/ark_asr/tiny/opd.yaml.
Usage: python bench/opd_step.py [--repeats 5] [--corpus DIR] [--student DIR] [--no-qwen3-asr] [--precision P]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from bench_corpus import demo_corpus  # bench/ (the script's directory)


def tiny_en_sized_qwen3_asr():
    """A Qwen3-ASR-architecture teacher (the real classes and tokenizer, random weights) with tiny.en's sizes."""
    from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    from common.teachers.qwen3_asr import Qwen3ASRTeacher, build_qwen3_asr_tokenizer

    cfg = Qwen3ASRConfig(
        audio_config=dict(
            encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, d_model=384, output_dim=384
        ),
        text_config=dict(
            model_type="qwen3",
            vocab_size=151936,
            hidden_size=384,
            num_hidden_layers=4,
            num_attention_heads=6,
            num_key_value_heads=6,
            intermediate_size=1536,
            head_dim=64,
            tie_word_embeddings=True,
        ),
    )
    torch.manual_seed(0)
    return Qwen3ASRTeacher(Qwen3ASRForConditionalGeneration(cfg).eval(), build_qwen3_asr_tokenizer())


def measure(module, cfg, batches, precision: str = "32-true") -> dict[str, float]:
    """Medians over ``batches`` of the SFT step and the OPD step (and its parts), alternating on each batch; the
    forward passes under ``precision``'s autocast, as Lightning runs a training step (backward outside it)."""
    from common.training.precision import autocast_for

    sft_cfg = dataclasses.replace(cfg, stage="sft")
    t = {k: [] for k in ("sft", "rollout", "teacher", "rescore+loss", "backward", "opd", "teacher_encoder")}
    for b in batches:
        if module.teacher.reusable_encoder:  # the teacher's encoder pass alone, which no exact step can skip
            with autocast_for(precision):
                feats = module.teacher.prepare(b["audios"], b["languages"])
                t0 = time.perf_counter()
                module.teacher.encode(feats)
            t["teacher_encoder"].append(time.perf_counter() - t0)
        module.cfg = sft_cfg
        t0 = time.perf_counter()
        with autocast_for(precision):
            loss, _ = module.ce_step(b)
        loss.backward()
        t["sft"].append(time.perf_counter() - t0)
        module.student.zero_grad(set_to_none=True)
        module.cfg = cfg
        t0 = time.perf_counter()
        with autocast_for(precision):
            loss, logs = module.opd_step(b)
        t1 = time.perf_counter()
        loss.backward()
        t["opd"].append(time.perf_counter() - t0)
        t["backward"].append(time.perf_counter() - t1)
        t["rollout"].append(logs["time_rollout"])
        t["teacher"].append(logs["time_teacher"])
        t["rescore+loss"].append(logs["time_rescore_loss"])
        module.student.zero_grad(set_to_none=True)
    return {k: statistics.median(v) for k, v in t.items() if v}


def table(med: dict[str, float]) -> None:
    print("| part | seconds | share of OPD step |\n|---|---|---|")
    for k in ("rollout", "teacher", "rescore+loss", "backward"):
        print(f"| {k} | {med[k]:.3f} | {100 * med[k] / med['opd']:.0f} % |")
    print(f"| OPD step | {med['opd']:.3f} | 100 % |\n| SFT step (forward+backward) | {med['sft']:.3f} | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--student", default="runs/ark_asr/tiny/sft/student")
    ap.add_argument("--no-qwen3-asr", action="store_true", help="skip the Qwen3-ASR-architecture teacher")
    ap.add_argument(
        "--precision",
        choices=("32-true", "bf16-mixed"),
        default="32-true",
        help="the steps' precision (bf16-mixed: make demo's on a CPU with native bf16)",
    )
    a = ap.parse_args()
    from ark_asr.config import ArkConfig
    from ark_asr.run import build
    from common.config import load
    from common.training.precision import autocast_for

    torch.manual_seed(0)
    corpus = demo_corpus(a.corpus)
    trained = (Path(a.student) / "ark_config.json").is_file()
    over = [f"data.train=[{corpus}/en_train/manifest.jsonl]", "data.dev=[]", "data.test=[]", "run_dir=/tmp/unused"]
    if trained:
        over.append(f"model.init_from={a.student}")
    else:
        over.append("model.init_from=null")
    cfg = load(ArkConfig, "configs/ark_asr/tiny/opd.yaml", over)
    module, dm, _ = build(cfg)
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(a.repeats)]
    med = measure(module, cfg, batches, a.precision)
    cached_cfg = dataclasses.replace(cfg, opd=dataclasses.replace(cfg.opd, teacher_encoder_cache_mb=4096.0))
    module.cfg = cached_cfg
    t_cached, teacher_cached = [], []
    for b in batches:  # first pass fills the cache (not timed), second is a later epoch
        with autocast_for(a.precision):
            module.opd_step(b)
    for b in batches:
        t0 = time.perf_counter()
        with autocast_for(a.precision):
            loss, logs = module.opd_step(b)
        loss.backward()
        t_cached.append(time.perf_counter() - t0)
        teacher_cached.append(logs["time_teacher"])
        module.student.zero_grad(set_to_none=True)
    opd_cached = statistics.median(t_cached)
    n_utt = statistics.median(len(b["ids"]) for b in batches)
    print(
        f"tiny Ark OPD step on CPU ({'SFT-trained' if trained else 'untrained'} student, "
        f"~{n_utt:.0f} utterances/batch, "
        f"k={cfg.opd.top_k}, rollout <= {cfg.opd.max_new_tokens} tokens, {a.repeats} batches, medians, "
        f"{a.precision})"
    )
    print("\nteacher: Whisper tiny.en (real; every clip padded to its 30 s window), encoder states computed")
    table(med)
    print(f"ratio: OPD step / SFT step time = {med['opd'] / med['sft']:.2f} (first epoch, Whisper teacher; goal <= 4)")
    floor = med["teacher_encoder"] / med["sft"]
    print(
        f"ratio: teacher encoder pass / SFT step = {floor:.2f} (the 30 s window alone, "
        f"{med['teacher_encoder']:.3f} s; an exact first-epoch OPD step is at least 1 + this = {1 + floor:.2f})"
    )
    print(
        f"teacher encoder states cached (a later epoch): teacher {statistics.median(teacher_cached):.3f} s, OPD step "
        f"{opd_cached:.3f} s; uncached / cached OPD step = {med['opd'] / opd_cached:.2f}"
    )
    print(f"ratio: OPD step (teacher encoder cached) / SFT step = {opd_cached / med['sft']:.2f} (later epochs)")
    if a.no_qwen3_asr:
        return
    q_module, _, info = build(cfg, tiny_en_sized_qwen3_asr())  # the same student (same init) and batches
    q_med = measure(q_module, cfg, batches, a.precision)
    print(
        "\nteacher: Qwen3-ASR architecture at tiny.en's sizes (random weights, 151,936-token vocabulary; audio encoded"
        f" at its own length; the student's vocabulary covers {info['token_map_teacher_coverage']:.0%} of its tokens)"
    )
    table(q_med)
    print(f"ratio: OPD step / SFT step time = {q_med['opd'] / q_med['sft']:.2f} (first epoch, Qwen3-ASR-kind teacher)")


if __name__ == "__main__":
    main()
