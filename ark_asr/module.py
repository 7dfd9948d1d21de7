"""Ark-ASR LightningModule: ``stage`` sft | td | opd.

sft, td: next-token CE on the assistant turn including the stop token (td: on teacher transcripts).
opd (one step, arXiv 2605.28139, OPD): student rollout (no grad) -> text (empty -> reference, counted) -> teacher
scores the re-tokenised text teacher-forced -> student re-scores the same tokens with grad -> union top-k KL on
U_t = S_t ∪ K_t, student logits taken only at U_t. The teacher is frozen and never part of the checkpoint.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from ark_asr.config import ArkConfig
from ark_asr.model import ArkStudent
from common.losses import build_candidates, cross_entropy, union_topk_kl
from common.teachers.encoder_cache import EncoderStateCache, content_keys, shared_cache
from common.teachers.protocol import Teacher
from common.teachers.token_map import TokenMap
from common.training import TrainSkips, ValidationLog, configure_optim, gathered_params, shard_student


def teacher_entries_in_student(S: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(B, T, k) bool: which of the teacher's top-k K_t (ids, -1 = unmapped) are also in the student's top-k S_t."""
    return ((S[..., :, None] == K[..., None, :]) & (K[..., None, :] >= 0)).any(-2)


class ArkCollator:
    """Audio -> the student's features; texts/languages pass through (targets are built in the step)."""

    def __init__(self, student: ArkStudent) -> None:
        self.student = student

    def __call__(self, audios, texts, languages) -> dict[str, Any]:
        batch = self.student.features(audios)
        batch["audios"] = audios  # the teacher computes its own features from the waveforms (opd)
        return batch


class ArkModule(L.LightningModule):
    def __init__(
        self,
        cfg: ArkConfig,
        student: ArkStudent,
        teacher: Optional[Teacher] = None,
        token_map: Optional[TokenMap] = None,
        dev_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.cfg, self.student = cfg, student
        object.__setattr__(self, "teacher", teacher)  # frozen, not a submodule: never in state_dict or optimizer
        self.token_map = token_map
        self.dev_names = list(dev_names)
        self.val_log = ValidationLog(self.dev_names)
        self.train_skips = TrainSkips()
        if cfg.stage == "opd" and (teacher is None or token_map is None):
            raise ValueError("stage opd needs a teacher and a token map")
        if cfg.stage == "opd" and cfg.opd.teacher_encoder_cache_mb and not teacher.reusable_encoder:
            raise ValueError(
                f"opd.teacher_encoder_cache_mb: the {type(teacher).__name__} teacher cannot reuse encoder states"
            )

    # -- stages ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        self.train_skips.count(self, batch)  # unreadable audio under bad_sample_policy=skip: counted, never silent
        if not batch["ids"]:
            return None  # every utterance of the batch was skipped (bad_sample_policy=skip)
        if self.cfg.stage in ("sft", "td"):
            loss, logs = self.ce_step(batch)
        else:
            loss, logs = self.opd_step(batch)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=len(batch["ids"]), sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def ce_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        targets = [self.student.encode_text(t) for t in batch["texts"]]
        hidden, tgt, mask = self.student.forward_hidden(batch["input_features"], batch["feature_lens"], targets)
        logits = self.student.lm_head()(hidden[mask])  # (N, V) only at transcript positions
        loss = cross_entropy(logits[None], tgt[mask][None])
        return loss, {"ce": loss, "target_tokens": mask.sum().float()}

    def opd_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        o, s, tm = self.cfg.opd, self.student, self.token_map
        t0 = time.perf_counter()
        roll, texts, empty, stopped = self.rollout(batch)  # 1-2. no grad; empty rollouts -> the reference
        t1 = time.perf_counter()
        # 3. the teacher scores the text teacher-forced in its own tokenisation (control tokens masked out)
        t_targets, langs = self.teacher_targets(texts, stopped, batch)
        if o.teacher_encoder_cache_mb:
            enc, hits = self.teacher_encoder_states(batch, langs)
            sc = self.teacher.score({"languages": langs}, t_targets, top_k=o.top_k, block_control=True, encoder_out=enc)
        else:
            hits = 0
            sc = self.teacher.score(
                self.teacher.prepare(batch["audios"], langs), t_targets, top_k=o.top_k, block_control=True
            )
        # 4. the same tokens in the student vocabulary; a token without counterpart ends the usable prefix
        s_targets, n_cut = [], 0
        for t in t_targets:
            mapped = tm.to_student(torch.tensor(t)).tolist()
            cut = mapped.index(-1) if -1 in mapped else len(mapped)
            n_cut += int(cut < len(mapped))
            s_targets.append(mapped[: max(cut, 1)] if cut else [s.stop_id])
        # did the teacher's tokenisation of each rollout text give back the rollout's own tokens? (this step only)
        same = [
            tm.record(ids, t[: len(t) - st]) for ids, t, st, e in zip(roll["ids"], t_targets, stopped, empty) if not e
        ]
        t2 = time.perf_counter()
        # 5. the student re-scores with grad; 6. candidates U_t = S_t u K_t; 7. union top-k KL at U_t
        feats, lens = batch["input_features"], batch["feature_lens"]  # a frozen encoder's states: the rollout's
        hidden, tgt, mask = s.forward_hidden(feats, lens, s_targets, roll.get("encoded"))
        T = tgt.shape[1]
        mask = mask & sc.mask[:, :T].to(mask.device)
        S = self.student_candidates(hidden, tgt, roll, s_targets)
        K = self.teacher_candidates(sc, T).to(mask.device)
        U = build_candidates(S, K, o.support)  # (B, T, |U|), -1 padded
        cand = U >= 0
        u_teacher = tm.to_teacher(U)
        lpT = sc.gather(u_teacher.clamp(min=0).to(sc.hidden.device), T).to(mask.device)  # (B, T, |U|)
        lpT = torch.where(cand & (u_teacher >= 0), lpT, torch.full_like(lpT, float("-inf")))
        if o.teacher_values == "raw_logit_topk":  # the released code: raw logits on K, log-probs on S \ K
            inK = (U[..., None] == K[..., None, :]).any(-1) & cand
            lpT = torch.where(inK, lpT + sc.lse[:, :T, None].to(lpT.device), lpT)
        zS = s.logits_at(hidden, U.clamp(min=0))  # (B, T, |U|) student logits only at the candidates
        loss = union_topk_kl(zS, lpT, cand, mask, o.tau, o.direction, o.jsd_beta)
        logs = self.opd_diagnostics(S, K, cand & torch.isfinite(lpT), mask, sc, T)
        trainer = self._trainer  # None outside a Trainer (unit tests call the step directly)
        if o.dump_every and self.global_step % o.dump_every == 0 and trainer is not None and trainer.is_global_zero:
            self.dump_positions(S, K, cand & torch.isfinite(lpT), mask, zS, lpT, cand, sc, tgt, texts, batch)
        logs.update(time_rollout=t1 - t0, time_teacher=t2 - t1, time_rescore_loss=time.perf_counter() - t2)
        logs.update(
            opd_loss=loss,
            rollout_len=torch.tensor([len(i) for i in roll["ids"]], dtype=torch.float).mean(),
            empty_rollouts=float(sum(empty)),
            stopped_ratio=float(sum(roll["stopped"])) / len(texts),
            retok_mismatch=(1.0 - sum(same) / len(same)) if same else 0.0,
            unmapped_cut=float(n_cut),
            teacher_encoder_cache_hits=float(hits),
        )
        return loss, logs

    # -- OPD pieces -----------------------------------------------------------------------------
    def rollout(self, batch: dict[str, Any]) -> tuple[dict, list[str], list[bool], list[bool]]:
        """The student's rollout (control tokens blocked, its top-k recorded at every step), its texts, which rows were
        empty (they fall back to the reference, a complete transcript) and which rows end with the stop token."""
        o, s = self.cfg.opd, self.student
        with gathered_params(s):  # FSDP: one all-gather per rollout, not per generated token
            roll = s.generate(
                batch["input_features"],
                batch["feature_lens"],
                max_new_tokens=o.max_new_tokens,
                do_sample=o.rollout == "sample",
                temperature=o.temperature,
                record_topk=o.top_k,
                return_encoded=s.encoder_reusable,  # the re-score (step 5) reads them: one encoder pass per step
            )
        texts = [s.decode(ids) for ids in roll["ids"]]
        empty = [not t for t in texts]
        texts = [r if e else t for t, r, e in zip(texts, batch["texts"], empty)]
        stopped = [e or st for e, st in zip(empty, roll["stopped"])]
        return roll, texts, empty, stopped

    @property
    def _enc_cache(self) -> EncoderStateCache:
        """The process's store of the teacher encoder's states (``opd.teacher_encoder_cache_mb``; shared with every
        model of this process that has the same encoder weights)."""
        return shared_cache(self.teacher.model.get_encoder(), self.cfg.opd.teacher_encoder_cache_mb)

    @torch.no_grad()
    def teacher_encoder_states(self, batch: dict[str, Any], langs: list[str]) -> tuple[torch.Tensor, int]:
        """The teacher's encoder states of the batch, (B, frames, d), through the shared
        :class:`~common.teachers.encoder_cache.EncoderStateCache` (``opd.teacher_encoder_cache_mb``): inputs encoded in
        an earlier step (or by another model of this process with the same encoder) come from memory. Returns the
        states and the number of cache hits."""
        # its features too are kept per clip (the same budget, a store of their own): a hit costs neither
        prepared = self.teacher.prepare(batch["audios"], langs, feature_cache_mb=self.cfg.opd.teacher_encoder_cache_mb)
        feats = prepared["input_features"]

        def compute(rows: list[int]) -> torch.Tensor:
            return self.teacher.encode(
                {**prepared, "input_features": feats[rows], "languages": [langs[i] for i in rows]}
            )

        return self._enc_cache.states(content_keys(feats), compute)

    def teacher_targets(self, texts: list[str], stopped: list[bool], batch: dict[str, Any]):
        """Teacher target ids of each text, with the teacher's stop token only where the student stopped (a rollout cut
        at ``max_new_tokens`` has no stop position), and the language the teacher is prompted with: the manifest's
        where it declares one, else inferred from the transcript being scored."""
        from common.text import detect_language

        declared = batch.get("language_declared") or [True] * len(texts)
        langs = [lang if d else detect_language(t) for lang, d, t in zip(batch["languages"], declared, texts)]
        targets = []
        for text, lang, st in zip(texts, langs, stopped):
            ids = self.teacher.encode_text(text, lang)  # ends with the teacher's stop token
            targets.append(ids if st else ids[:-1])
        return targets, langs

    @torch.no_grad()
    def student_candidates(self, hidden, tgt, roll: dict, s_targets: list[list[int]]) -> torch.Tensor:
        """S_t (B, T, k): the student's top-k at each position after the rollout's control-token blocking, the actual
        next token always included. Rows whose targets are the rollout's own tokens take the top-k recorded during
        the rollout; other rows (re-tokenised, cut, or the reference) take it from the re-scored logits."""
        s, k = self.student, self.cfg.opd.top_k
        T = tgt.shape[1]
        S = torch.zeros((tgt.shape[0], T, k), dtype=torch.long, device=hidden.device)  # padding: masked out
        rescore = []
        for i, (ids, st, rec) in enumerate(zip(roll["ids"], roll["stopped"], roll["topk"])):
            if list(ids) + ([s.stop_id] if st else []) == list(s_targets[i]) and len(rec) == len(s_targets[i]):
                S[i, : len(rec)] = rec.to(S.device)
            else:
                rescore.append(i)
        if rescore:  # only these rows are projected again, (rows, V) at a time: never a (B, T, V) tensor
            rows, blocked = torch.tensor(rescore, device=hidden.device), s.control_ids.to(hidden.device)
            for t in range(T):
                z = s.lm_head()(hidden[rows, t].detach()).float()
                S[rows, t] = z.index_fill(-1, blocked, float("-inf")).topk(k, -1).indices
        has = (S == tgt[..., None]).any(-1)
        S[..., -1] = torch.where(has, S[..., -1], tgt)
        if self.cfg.opd.student_stop == "generated_only":  # the released trainer: stop only where it was generated
            S = torch.where((S == s.stop_id) & (tgt[..., None] != s.stop_id), torch.full_like(S, -1), S)
        return S

    def teacher_candidates(self, sc, T: int) -> torch.Tensor:
        """K_t (B, T, k) in student ids, -1 where unmapped or where the teacher's value is not finite; a position
        with fewer than 2 valid teacher entries gets an empty teacher set (all -1), as in the authors' trainer."""
        K = self.token_map.to_student(sc.topk_ids[:, :T])
        valid = (K >= 0) & torch.isfinite(sc.topk_logprobs[:, :T]).to(K.device)
        keep = valid & (valid.sum(-1, keepdim=True) >= 2)
        return torch.where(keep, K, torch.full_like(K, -1))

    @torch.no_grad()
    def opd_diagnostics(self, S, K, finite_cand, mask, sc, T) -> dict[str, torch.Tensor]:
        """VUSS = mean |{v in S ∪ K with a finite teacher value}|; overlap |S ∩ K| / k; teacher mass on S ∩ K."""
        m = mask.float()
        n = m.sum().clamp(min=1)
        vuss = (finite_cand.sum(-1).float() * m).sum() / n
        in_k = teacher_entries_in_student(S, K)
        overlap = (in_k.sum(-1).float() * m).sum() / n / self.cfg.opd.top_k
        mass = ((sc.topk_logprobs[:, :T].to(m.device).exp() * in_k).sum(-1) * m).sum() / n
        return {"vuss": vuss, "overlap_ratio": overlap, "teacher_mass_overlap": mass}

    @torch.no_grad()
    def dump_positions(self, S, K, finite_cand, mask, zS, lpT, cand, sc, tgt, texts, batch) -> None:
        """Per-position OPD diagnostics of this batch for the notebooks (02_opd_diagnostics): RUN/diagnostics/*.npz."""
        import numpy as np

        from common.io import atomic_write_bytes

        o, T = self.cfg.opd, tgt.shape[1]
        per_kl = union_topk_kl(zS.detach(), lpT, cand, mask, o.tau, o.direction, o.jsd_beta, reduction="none")
        inter = teacher_entries_in_student(S, K)
        arrays = {
            "mask": mask.cpu().numpy(),
            "n_union": finite_cand.sum(-1).cpu().numpy(),
            "n_overlap": inter.sum(-1).cpu().numpy(),
            "kl": per_kl.float().cpu().numpy(),
            "teacher_mass_overlap": (sc.topk_logprobs[:, :T].to(inter.device).exp() * inter)
            .sum(-1)
            .float()
            .cpu()
            .numpy(),
            "student_tokens": tgt.cpu().numpy(),
            "top_k": np.array(o.top_k),
            "step": np.array(self.global_step),
            "texts": np.array(texts),
            "references": np.array(batch["texts"]),
            "ids": np.array(batch["ids"]),
        }
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        out = Path(self.trainer.default_root_dir) / "diagnostics" / f"opd_step{self.global_step:07d}.npz"
        atomic_write_bytes(out, buf.getvalue())

    # -- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not batch["ids"]:
            self.val_log.count_skipped(batch, dataloader_idx)
            return
        with gathered_params(self.student):
            out = self.student.generate(
                batch["input_features"], batch["feature_lens"], max_new_tokens=self.cfg.decoding.max_new_tokens
            )
        hyps = [self.student.decode(i) for i in out["ids"]]
        loss, logs = self.ce_step(batch)  # teacher-forced on the references: the dev loss
        self.val_log.add_loss(loss, logs["target_tokens"], dataloader_idx)
        self.val_log.update(batch, hyps, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self.val_log.transcribe_samples(self, self.teacher)
        self.val_log.log(self)

    def configure_model(self) -> None:
        shard_student(self, self.student)  # FSDP2 (trainer.strategy: fsdp2) only; a no-op otherwise

    def configure_optimizers(self):
        return configure_optim(self.student.parameters(), self.cfg.optim, self.cfg.trainer.max_steps)
