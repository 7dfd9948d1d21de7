"""ASKD-Whisper KD step with the teacher online vs from the teacher cache (top-k + tempered log-partition).

Real Whisper tiny.en teacher -> 2-decoder-layer student, frozen shared encoder, tau 2, the same batches of a small
espeak-ng corpus, forward + backward of ``AskdModule.training_step`` in phase A, online and cached alternating,
medians over repeats, one process. The shared encoder pass is timed separately: the cache removes the teacher's
decoder and full-vocabulary softmax, not the encoder pass that the student needs anyway. Then the frozen encoder's
shared store (``encoder_cache_mb``, ``common.teachers.encoder_cache``): the online step with the encoder states
computed vs read from the store (a later epoch, another student of the same teacher, another seed), and a decoding
batch of the student (``decoding.encoder_cache_mb``) with and without them.
Usage: python bench/kd_step.py [--repeats 5] [--top-k 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top-k", type=int, default=8)
    a = ap.parse_args()
    from askd_whisper.config import AskdConfig
    from askd_whisper.run import build
    from common.config import from_dict
    from common.data.synth import SynthConfig, synthesize_corpus
    from common.teachers.cache import CacheConfig, build_cache
    from common.teachers.whisper_teacher import WhisperTeacher
    from common.whisper import load_whisper

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="kd_step_"))
    corpus = synthesize_corpus(
        SynthConfig(out_dir=str(tmp / "corpus"), en_sizes=[64, 4, 4], zh_sizes=[0, 0, 0]), progress=False
    )
    train = str(corpus / "en_train" / "manifest.jsonl")
    teacher = WhisperTeacher(*load_whisper("bundled:tiny.en"))
    build_cache(
        CacheConfig(manifest=train, out_dir=str(tmp / "cache"), top_k=a.top_k, tau=2.0, generate=False),
        teacher=teacher,
        progress=False,
    )
    base = {
        "run_dir": str(tmp / "run"),
        "student": {"n_decoder_layers": 2},
        "self_kd": {"enabled": False},
        "curriculum": {"schedule": "constant", "lambda_0": 0.5, "tau": 2.0},
        "data": {"train": [train], "batch_seconds": 40.0, "num_buckets": 2},
        "trainer": {"max_steps": 1000},
    }
    online, dm, _ = build(from_dict(AskdConfig, base), teacher)
    stored, _, _ = build(from_dict(AskdConfig, {**base, "encoder_cache_mb": 2000.0}), teacher)
    cached, _, _ = build(
        from_dict(AskdConfig, {**base, "teacher_source": "cache", "teacher_cache": str(tmp / "cache")}), teacher
    )
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(a.repeats + 1)]

    def step(module, batch) -> float:
        t0 = time.perf_counter()
        module.training_step(batch, 0).backward()
        dt = time.perf_counter() - t0
        module.student.zero_grad(set_to_none=True)
        return dt

    step(online, batches[0]), step(cached, batches[0])  # warm-up
    t_on, t_ca, t_enc = [], [], []
    for b in batches[1:]:  # alternate so drifts in machine load hit both
        t_on.append(step(online, b))
        t_ca.append(step(cached, b))
        t0 = time.perf_counter()
        with torch.no_grad():
            online._encode(b["input_features"])
        t_enc.append(time.perf_counter() - t0)
    for b in batches[1:]:  # fill the store
        step(stored, b)
    t_st = [step(stored, b) for b in batches[1:]]  # every utterance's states now come from the store
    from common.evaluate import DecodeConfig, WhisperTranscriber

    tr = WhisperTranscriber(online.student, online.processor)
    dec = {mb: [] for mb in (0.0, 2000.0)}
    for b in batches[1:]:
        for mb in dec:  # 2000: the store already holds these clips (filled by the training steps above)
            t0 = time.perf_counter()
            tr.transcribe(b, DecodeConfig(max_new_tokens=32, encoder_cache_mb=mb))
            dec[mb].append(time.perf_counter() - t0)
    st, d0, d1 = statistics.median(t_st), statistics.median(dec[0.0]), statistics.median(dec[2000.0])
    on, ca, enc = statistics.median(t_on), statistics.median(t_ca), statistics.median(t_enc)
    n_utt = statistics.median(len(b["ids"]) for b in batches[1:])
    print(
        f"ASKD KD step on CPU ({torch.get_num_threads()} threads): tiny.en -> 2 decoder layers, tau 2, "
        f"~{n_utt:.0f} utterances/batch, cache top-{a.top_k}, {a.repeats} batches, medians"
    )
    print("| teacher | step s (fwd+bwd) | of which the shared encoder pass s |\n|---|---|---|")
    print(f"| online | {on:.3f} | {enc:.3f} |\n| cache | {ca:.3f} | {enc:.3f} |")
    print(f"ratio: ASKD KD step time, online teacher / teacher cache = {on / ca:.2f} (goal >= 1.8)")
    print(
        f"ratio: ASKD KD step time without the shared encoder pass, online / cache = {(on - enc) / (ca - enc):.2f} "
        f"(what the cache removes)"
    )
    print(f"| online, encoder states from the shared store | {st:.3f} | 0 |")
    print(f"decoding a batch (greedy, <= 32 tokens): encoder run {d0:.3f} s, encoder states from the store {d1:.3f} s")
    print(f"ratio: ASKD KD step time, encoder states computed / from the shared store = {on / st:.2f}")
    print(f"ratio: student decoding batch time, encoder run / encoder states from the shared store = {d0 / d1:.2f}")


if __name__ == "__main__":
    main()
