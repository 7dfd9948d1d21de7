"""glibc's allocator, default vs ``common.training.allocator.keep_large_blocks``, on the demo's costliest kinds of
work, alternating in one process (``mallopt`` switches the policy between steps, so the machine's drift cancels):
(1) the Ark-ASR SFT step of configs/demo/ark_sft.yaml (forward, cross-entropy, backward, AdamW), (2) the Whisper
tiny.en encoder's 30 s pass on a batch of 8 clips (the teacher's decoding, caching and OPD scoring, the ASKD students'
first epoch), (3) the evaluation's greedy tiny.en decoding of 32 clips (``common.evaluate.WhisperTranscriber``).
"default" is glibc's mmap threshold at its dynamic ceiling (32 MiB, trim threshold 64 MiB: what a long run's default
settles at); "kept" is 1 GiB for both. Per step: wall time, minor page faults and kernel CPU time.
Usage: python bench/allocator.py [--repeats 8] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from bench_corpus import demo_ark_sft, demo_corpus  # bench/ (the script's directory)

from common.training.allocator import DEFAULT_THRESHOLD_MB, set_thresholds

POLICIES = {"default": (32, 64), "kept": (DEFAULT_THRESHOLD_MB, DEFAULT_THRESHOLD_MB)}


def compare(name: str, step, repeats: int) -> float:
    rows = {k: {"wall": [], "faults": [], "sys": []} for k in POLICIES}
    for i in range(repeats + 1):
        for k in POLICIES:
            assert set_thresholds(*POLICIES[k])
            step()  # the policy's first step after a switch: not counted (the heap adjusts)
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            step()
            t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            if i:
                rows[k]["wall"].append(t1 - t0)
                rows[k]["faults"].append(r1.ru_minflt - r0.ru_minflt)
                rows[k]["sys"].append(r1.ru_stime - r0.ru_stime)
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in rows.items()}
    for k in POLICIES:
        m = med[k]
        print(f"| {name} | {k} | {m['wall']:.3f} | {m['faults']:.0f} | {m['sys'] * 1e3:.0f} |")
    return med["default"]["wall"] / med["kept"]["wall"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--corpus", default=None)
    a = ap.parse_args()

    from common.data.collate import whisper_log_mel
    from common.evaluate import DecodeConfig, WhisperTranscriber
    from common.training.optim import configure_optim
    from common.training.precision import autocast_for, demo_precision
    from common.whisper import load_whisper

    prec = demo_precision("auto")
    corpus = demo_corpus(a.corpus)
    print(f"{torch.get_num_threads()} threads, {prec}\n")
    print("| step | allocator | wall s | minor page faults | kernel CPU ms |\n|---|---|---|---|---|")

    cfg, module, dm = demo_ark_sft(corpus)
    it = iter(dm.train_dataloader())
    batch = next(it)
    params = [p for p in module.student.parameters() if p.requires_grad]
    opt = configure_optim(params, cfg.optim, 100)["optimizer"]

    def ark_step():
        with autocast_for(prec):
            loss = module.ce_step(batch)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    r_ark = compare(f"Ark-ASR SFT (demo, {len(batch['ids'])} utts)", ark_step, a.repeats)

    model, processor = load_whisper("bundled:tiny.en")
    model.eval()
    feats = whisper_log_mel(processor.feature_extractor, next(it)["audios"][:8])

    @torch.no_grad()
    def encoder_pass():
        with autocast_for(prec):
            model.get_encoder()(feats)

    r_enc = compare("Whisper tiny.en encoder, 30 s x 8", encoder_pass, a.repeats)

    # the evaluation's decoding (common.evaluate.WhisperTranscriber, greedy, the demo's 48-token limit), 32 clips
    clips = [x for _ in range(4) for x in next(it)["audios"]][:32]
    tr = WhisperTranscriber(model, processor)
    dec_batch = tr.collate(clips, [""] * len(clips), ["en"] * len(clips))
    dec_cfg = DecodeConfig(max_new_tokens=48)

    def decode():
        with autocast_for(prec):
            tr.transcribe(dec_batch, dec_cfg)

    r_dec = compare(f"tiny.en greedy decoding, {len(clips)} clips", decode, max(2, a.repeats // 2))
    print(f"\nratio: Ark-ASR SFT step, glibc default / kept blocks = {r_ark:.2f}")
    print(f"ratio: tiny.en 30 s encoder pass (8 clips), glibc default / kept blocks = {r_enc:.2f}")
    print(f"ratio: tiny.en greedy decoding (32 clips), glibc default / kept blocks = {r_dec:.2f}")


if __name__ == "__main__":
    main()
