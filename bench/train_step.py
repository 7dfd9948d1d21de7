"""A whole training step of the demo's two students, before and after the 2026-12-02 kernel changes, alternating in
one process (so the machine's speed, which varies through the night, cancels): the Ark-ASR SFT step
(configs/demo/ark_sft.yaml: forward, cross-entropy, backward, AdamW) and the ASKD-Whisper CE-only student step
(configs/demo/askd_ce_only.yaml, the frozen encoder's states precomputed as the demo's store holds them), each with
(a) the cross-entropy over a (B, V, T) view and torch's CPU AdamW loop, (b) the project's cross-entropy over
(B*T, V) rows and the fused AdamW (``common.losses.cross_entropy``, ``common.training.optim``). bf16-mixed where the
CPU has native bf16, else float32.
Usage: python bench/train_step.py [--repeats 5] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_corpus import demo_corpus  # bench/ (the script's directory)
from cross_entropy import view_cross_entropy  # bench/cross_entropy.py: the layout before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--corpus", default=None)
    a = ap.parse_args()

    import ark_asr.module as ark_module
    import askd_whisper.module as askd_module
    from ark_asr.config import ArkConfig
    from ark_asr.run import build as build_ark
    from askd_whisper.config import AskdConfig
    from askd_whisper.run import build as build_askd
    from common.config import load
    from common.losses import cross_entropy
    from common.training.optim import configure_optim
    from common.training.precision import autocast_for, demo_precision

    prec = demo_precision("auto")
    corpus = demo_corpus(a.corpus)
    train = [f"data.train=[{corpus}/en_train/manifest.jsonl]", "data.test=[]", "run_dir=/tmp/unused"]
    print(f"{torch.get_num_threads()} threads, {prec}\n")
    print("| step | (a) before s | (b) now s | (a) / (b) |\n|---|---|---|---|")
    ratios = []

    def compare(name, params, cfg, step_fn, patch_target, batches):
        opts = {
            "a": torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), foreach=False),
            "b": configure_optim(params, cfg.optim, 100)["optimizer"],
        }
        losses = {"a": view_cross_entropy, "b": cross_entropy}
        times = {"a": [], "b": []}
        for i in range(a.repeats + 1):
            b = batches[i % len(batches)]
            for k in ("a", "b"):
                patch_target.cross_entropy = losses[k]
                t0 = time.perf_counter()
                with autocast_for(prec):
                    loss = step_fn(b)
                loss.backward()
                opts[k].step()
                opts[k].zero_grad(set_to_none=True)
                if i:  # the first round: warm-up
                    times[k].append(time.perf_counter() - t0)
        patch_target.cross_entropy = cross_entropy
        ta, tb = statistics.median(times["a"]), statistics.median(times["b"])
        print(f"| {name} | {ta:.3f} | {tb:.3f} | {ta / tb:.2f} |")
        ratios.append(f"ratio: {name} step, before / now = {ta / tb:.2f}")

    cfg = load(ArkConfig, "configs/demo/ark_sft.yaml", train)
    module, dm, _ = build_ark(cfg)
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(3)]
    params = [p for p in module.student.parameters() if p.requires_grad]
    compare("Ark-ASR SFT (demo)", params, cfg, lambda b: module.ce_step(b)[0], ark_module, batches)

    cfg = load(AskdConfig, "configs/demo/askd_ce_only.yaml", train)
    module, dm, _ = build_askd(cfg)
    module.log_dict = module.log = lambda *x, **k: None
    module.train()
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(3)]
    with autocast_for(prec):
        for b in batches:  # the demo's encoder-state store: computed once per clip, read in every later epoch
            module._encode(b["input_features"], b["ids"])
    params = [p for p in module.student.parameters() if p.requires_grad]
    compare(
        "ASKD-Whisper CE-only student (demo)",
        params,
        cfg,
        lambda b: module.training_step(b, 0),
        askd_module,
        batches,
    )
    print("\n" + "\n".join(ratios))


if __name__ == "__main__":
    main()
