"""Time split of one Ark-ASR OPD step (rollout, teacher scoring, student re-scoring + loss, backward) and the
OPD-step / SFT-step ratio, on the tiny CPU config, same batches, alternating, medians over repeats, one process;
then the same OPD steps with the teacher's encoder states already in ``opd.teacher_encoder_cache_mb``'s cache (a
later epoch of a small corpus, as in ``make demo``).

The student is the tiny SFT result (runs/ark_asr/tiny/sft/student) when it exists (a trained student stops its
rollouts; a random one runs to the length limit), else a fresh one from configs/ark_asr/tiny/opd.yaml.
Usage: python bench/opd_step.py [--repeats 5] [--corpus DIR] [--student DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--student", default="runs/ark_asr/tiny/sft/student")
    a = ap.parse_args()
    import dataclasses

    from ark_asr.config import ArkConfig
    from ark_asr.run import build
    from common.config import load
    from common.data.synth import SynthConfig, synthesize_corpus
    from common.paths import default_corpus_dir

    torch.manual_seed(0)
    corpus = synthesize_corpus(SynthConfig(out_dir=str(a.corpus or default_corpus_dir())), progress=False)
    trained = (Path(a.student) / "ark_config.json").is_file()
    over = [f"data.train=[{corpus}/en_train/manifest.jsonl]", "data.dev=[]", "data.test=[]", "run_dir=/tmp/unused"]
    if trained:
        over.append(f"model.init_from={a.student}")
    else:
        over.append("model.init_from=null")
    cfg = load(ArkConfig, "configs/ark_asr/tiny/opd.yaml", over)
    module, dm, _ = build(cfg)
    sft_cfg = dataclasses.replace(cfg, stage="sft")
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(a.repeats)]
    t = {k: [] for k in ("sft", "rollout", "teacher", "rescore+loss", "backward", "opd")}
    for b in batches:
        module.cfg = sft_cfg
        t0 = time.perf_counter()
        loss, _ = module.ce_step(b)
        loss.backward()
        t["sft"].append(time.perf_counter() - t0)
        module.student.zero_grad(set_to_none=True)
        module.cfg = cfg
        t0 = time.perf_counter()
        loss, logs = module.opd_step(b)
        t1 = time.perf_counter()
        loss.backward()
        t["opd"].append(time.perf_counter() - t0)
        t["backward"].append(time.perf_counter() - t1)
        t["rollout"].append(logs["time_rollout"])
        t["teacher"].append(logs["time_teacher"])
        t["rescore+loss"].append(logs["time_rescore_loss"])
        module.student.zero_grad(set_to_none=True)
    cached_cfg = dataclasses.replace(cfg, opd=dataclasses.replace(cfg.opd, teacher_encoder_cache_mb=4096.0))
    module.cfg = cached_cfg
    t["opd_cached"], t["teacher_cached"] = [], []
    for b in batches:  # first pass fills the cache (not timed), second is a later epoch
        module.opd_step(b)
    for b in batches:
        t0 = time.perf_counter()
        loss, logs = module.opd_step(b)
        loss.backward()
        t["opd_cached"].append(time.perf_counter() - t0)
        t["teacher_cached"].append(logs["time_teacher"])
        module.student.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in t.items()}
    n_utt = statistics.median(len(b["ids"]) for b in batches)
    print(
        f"tiny Ark OPD step on CPU ({'SFT-trained' if trained else 'untrained'} student, "
        f"~{n_utt:.0f} utterances/batch, "
        f"k={cfg.opd.top_k}, rollout <= {cfg.opd.max_new_tokens} tokens, {a.repeats} batches, medians)"
    )
    print("| part | seconds | share of OPD step |\n|---|---|---|")
    for k in ("rollout", "teacher", "rescore+loss", "backward"):
        print(f"| {k} | {med[k]:.3f} | {100 * med[k] / med['opd']:.0f} % |")
    print(f"| OPD step | {med['opd']:.3f} | 100 % |\n| SFT step (forward+backward) | {med['sft']:.3f} | |")
    print(f"OPD-step / SFT-step = {med['opd'] / med['sft']:.2f}")
    print(f"ratio: OPD step / SFT step time = {med['opd'] / med['sft']:.2f} (goal <= 4)")
    print(
        f"teacher encoder states cached (a later epoch): teacher {med['teacher_cached']:.3f} s, OPD step "
        f"{med['opd_cached']:.3f} s; uncached / cached OPD step = {med['opd'] / med['opd_cached']:.2f}"
    )


if __name__ == "__main__":
    main()
