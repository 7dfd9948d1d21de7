"""The OPD step against the SFT step at the paper's dimensions on a CPU (issue 23's second figure): the GPU check's
Ark-ASR steps (``bench/gpu_check.py``'s ``ark_steps``: Whisper-large-v3's encoder + a Qwen2.5-0.5B-architecture LM as
the student, Qwen3-ASR-1.7B's architecture as the teacher, random weights, one forward + backward each, medians of
``--repeats`` after a warm-up, one process) run in float32 on this CPU, without sharding. A random student runs its
rollouts to the length limit (64 tokens), as on the GPU check. Prints the step times, the OPD phases' shares and the
ratio. Usage: python bench/opd_step_paper.py [--batch 2] [--seconds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from gpu_check import ark_steps, synthetic_manifest  # bench/ (the script's directory)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2, help="utterances per step")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each synthetic utterance")
    a = ap.parse_args()
    torch.manual_seed(0)
    ns = argparse.Namespace(device="cpu", dims="paper", batch=a.batch, seconds=a.seconds, ark_strategy="none")
    with tempfile.TemporaryDirectory() as tmp:
        r = ark_steps(ns, synthetic_manifest(Path(tmp), a.batch, a.seconds), Path(tmp) / "run")
    print(f"{torch.get_num_threads()} threads, float32, {r['batch_utterances']} x {a.seconds:g} s utterances\n")
    print("| part | seconds or share |\n|---|---|")
    print(f"| SFT step (forward + backward) | {r['sft_step_s']:.2f} s |")
    print(f"| OPD step (rollout, teacher scoring, re-score + loss, backward) | {r['opd_step_s']:.2f} s |")
    for k, v in r["opd_phase_shares"].items():
        print(f"| OPD {k[len('time_') :]} share | {v:.0%} |")
    print(f"| rollout tokens/s | {r['rollout_tokens_per_s']:.1f} |")
    print(f"\nratio: OPD step / SFT step at paper dims, CPU float32 = {r['opd_over_sft']:.2f} (goal <= 4)")


if __name__ == "__main__":
    main()
