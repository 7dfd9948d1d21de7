"""float32 vs bf16 autocast on this machine, one process: the Whisper tiny.en encoder's 30 s pass (the teacher's and
the ASKD students' frozen encoder; most of a decoding batch) and one Ark-ASR SFT step of the demo's configuration
(configs/demo/ark_sft.yaml: tiny.en encoder frozen + the 4-layer LM), same inputs, alternating, medians.

On a CPU with native bf16 (AVX512-BF16 / AMX) this is what ``make demo --precision auto`` gains; elsewhere bf16 is
emulated and the ratios fall below 1 (the reason ``auto`` checks the CPU).
Usage: python bench/precision.py [--repeats 5] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_corpus import demo_ark_sft, demo_corpus  # bench/ (the script's directory)


def _median_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    fn_a(), fn_b()  # warm-up (oneDNN primitive creation)
    ta, tb = [], []
    for _ in range(repeats):
        for fn, t in ((fn_a, ta), (fn_b, tb)):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--corpus", default=None)
    a = ap.parse_args()

    from common.training.precision import autocast_for, cpu_has_native_bf16
    from common.whisper import load_whisper

    torch.manual_seed(0)
    print(f"CPU native bf16: {cpu_has_native_bf16()}, {torch.get_num_threads()} threads\n")
    enc = load_whisper("bundled:tiny.en")[0].eval().model.encoder
    x = torch.randn(8, 80, 3000)

    def encode(precision: str):
        def run():
            with torch.no_grad(), autocast_for(precision):
                return enc(x).last_hidden_state

        return run

    f32, b16 = _median_pair(encode("32-true"), encode("bf16-mixed"), a.repeats)
    rel = (encode("bf16-mixed")().float() - encode("32-true")()).norm() / encode("32-true")().norm()
    print("| part | float32 s | bf16-mixed s | float32 / bf16 |\n|---|---|---|---|")
    print(f"| tiny.en encoder, 8 clips x 30 s | {f32:.3f} | {b16:.3f} | {f32 / b16:.2f} |")
    ratios = [f"ratio: tiny.en encoder pass float32 / bf16-mixed = {f32 / b16:.2f} (relative state error {rel:.4f})"]

    corpus = demo_corpus(a.corpus)
    _, module, dm = demo_ark_sft(corpus)
    it = iter(dm.train_dataloader())
    batch = next(it)

    def step(precision: str):
        def run():
            with autocast_for(precision):
                loss, _ = module.ce_step(batch)
            loss.backward()
            module.student.zero_grad(set_to_none=True)

        return run

    f32, b16 = _median_pair(step("32-true"), step("bf16-mixed"), a.repeats)
    print(f"| Ark SFT step (demo config, {len(batch['ids'])} utterances) | {f32:.3f} | {b16:.3f} | {f32 / b16:.2f} |\n")
    ratios.append(f"ratio: Ark SFT step float32 / bf16-mixed = {f32 / b16:.2f} (demo configuration)")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
