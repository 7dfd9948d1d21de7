"""Validation bookkeeping shared by both modules: error rates per dev set and TensorBoard samples; the training
utterances skipped for unreadable audio."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch


class TrainSkips:
    """Training utterances whose audio failed to decode mid-training under ``bad_sample_policy: skip``: kept by id on
    each rank, logged at every step as the running total over all ranks (``train/skipped_utterances_total``: one real
    skip reads 1 from that step on, whatever ``log_every_n_steps`` samples), and summed over ranks for the fit
    summary (``data_skipped.train_undecodable``)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()  # each utterance once, however many epochs skip it

    def count(self, module: L.LightningModule, batch: dict[str, Any]) -> None:
        self.ids.update(uid for uid, _reason in batch.get("skipped") or [])
        module.log(
            "train/skipped_utterances_total", float(len(self.ids)), reduce_fx="sum", sync_dist=True, batch_size=1
        )

    def total(self, trainer: L.Trainer) -> int:
        """All ranks' skips (a collective: every rank calls it)."""
        n = torch.tensor(float(len(self.ids)), device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(n, reduce_op="sum").item()) if trainer.world_size > 1 else len(self.ids)


class ValidationLog(torch.nn.Module):
    """Validation bookkeeping of both modules: one :class:`~common.metrics.ErrorRate` per dev set (a sub-module, so it
    follows the device; counts synced across ranks), logged per set as the error rate with its summed counts and the
    skipped utterances, and a few samples of every dev set to TensorBoard, tagged with the set's name: reference,
    student and teacher transcripts as a text table, and the audio."""

    def __init__(self, dev_names: Sequence[str], n_samples: int = 3) -> None:
        from common.metrics import ErrorRate

        super().__init__()
        self.names = list(dev_names)
        self.metrics = torch.nn.ModuleList([ErrorRate() for _ in self.names])
        from torchmetrics.aggregation import MeanMetric

        # teacher-forced CE on the references, token-weighted (exact over ranks: sums are synced, not means)
        self.losses = torch.nn.ModuleList([MeanMetric() for _ in self.names])
        self.n = n_samples
        self.samples: list[dict[str, Any]] = []
        self.teacher_texts: dict[str, str] = {}
        self.skipped = [0] * len(self.names)  # dev utterances whose audio could not be read (policy skip)

    def add_loss(self, loss: torch.Tensor, n_tokens: torch.Tensor | float, dataloader_idx: int = 0) -> None:
        """The mean teacher-forced CE of one dev batch and its number of target tokens."""
        self.losses[dataloader_idx].update(loss.detach().float(), weight=torch.as_tensor(n_tokens).float())

    def count_skipped(self, batch: dict[str, Any], dataloader_idx: int = 0) -> None:
        self.skipped[dataloader_idx] += len(batch.get("skipped") or [])

    def update(self, batch: dict[str, Any], hyps: list[str], dataloader_idx: int = 0) -> None:
        """Score one batch of dev set ``dataloader_idx`` and keep the first few utterances as samples."""
        self.metrics[dataloader_idx].update(hyps, batch["texts"], batch["languages"])
        self.count_skipped(batch, dataloader_idx)
        name = self.names[dataloader_idx] if dataloader_idx < len(self.names) else "dev"
        kept = sum(1 for s in self.samples if s["set"] == name)
        audios = batch.get("audios") or [None] * len(hyps)
        for uid, ref, hyp, lang, audio in zip(batch["ids"], batch["texts"], hyps, batch["languages"], audios):
            if kept < self.n:
                self.samples.append({"set": name, "id": uid, "ref": ref, "hyp": hyp, "language": lang, "audio": audio})
                kept += 1

    def transcribe_samples(self, module: L.LightningModule, teacher: Any) -> None:
        """The teacher's transcripts of the kept samples, for the TensorBoard table: once per utterance (the teacher is
        frozen), on rank 0 only, skipped when the teacher is sharded across ranks (one rank cannot run it alone)."""
        if teacher is None or module._trainer is None or not module._trainer.is_global_zero:
            return
        missing = [s for s in self.samples if s["id"] not in self.teacher_texts and s["audio"] is not None]
        if not missing or any(type(p).__name__ == "DTensor" for p in teacher.model.parameters()):
            return
        with torch.no_grad():
            gen = teacher.generate(
                teacher.prepare([s["audio"] for s in missing], [s["language"] for s in missing]), max_new_tokens=64
            )
        self.teacher_texts.update({s["id"]: t for s, t in zip(missing, gen.texts)})

    def log(self, module: L.LightningModule) -> None:
        """Log each dev set's error rate and counts (summed over ranks) and, on rank 0, the sample table and audio."""
        for name, m, lm in zip(self.names, self.metrics, self.losses):
            if lm.update_count:
                module.log(f"val/{name}/loss", lm.compute())
            lm.reset()
            r = m.compute()  # counts summed over ranks
            module.log(f"val/{name}/error_rate", r["error_rate"].float())
            for key in ("n_utts", "ref_units", "sub", "del", "ins"):
                module.log(f"val/{name}/{key}", r[key].float())
            module.log(
                f"val/{name}/n_skipped", float(self.skipped[self.names.index(name)]), reduce_fx="sum", sync_dist=True
            )
            m.reset()
        self.skipped = [0] * len(self.names)
        samples, self.samples = self.samples, []
        if not samples or module._trainer is None or not module._trainer.is_global_zero:
            return
        tb = getattr(module.logger, "experiment", None)
        if tb is None or not hasattr(tb, "add_text"):
            return
        step = module.global_step
        for name in dict.fromkeys(s["set"] for s in samples):  # every dev set, tagged with its name
            mine = [s for s in samples if s["set"] == name]
            rows = ["| utterance | reference | student | teacher |", "|---|---|---|---|"]
            for s in mine:
                rows.append(f"| {s['id']} | {s['ref']} | {s['hyp']} | {self.teacher_texts.get(s['id'], '-')} |")
            tb.add_text(f"val/{name}/samples", "\n".join(rows), step)
            for i, s in enumerate(mine):
                if s["audio"] is not None:
                    tb.add_audio(
                        f"val/{name}/audio/{i}", torch.as_tensor(s["audio"]).float()[None], step, sample_rate=16000
                    )
