"""ASKD-Whisper LightningModule: phase A (decaying teacher KD) then phase B (self-KD).

phase A (step < boundary):  L = w_CE(r) CE(y) + (1/|T|) sum_t w_t tau^2 KL(pT_t || pS_t),
                            w_t = lambda(r) [x gating/confidence]
phase B (step >= boundary): L = (1 - beta) CE(y) + beta tau^2 KL(pSelf || pS)
The teacher is frozen, kept outside the module's parameters and checkpoints; the self-teacher (snapshot, EMA or
previous-epoch copy of the student) IS part of the checkpoint, so a resumed run is the same run.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import lightning as L
import torch

from askd_whisper.config import AskdConfig
from askd_whisper.schedules import adaptive_token_weights, self_kd_weight, teacher_weight
from askd_whisper.student import build_student
from common.evaluate import WhisperTranscriber
from common.losses import cross_entropy, kd_kl, sparse_kd_kl
from common.teachers.cache import TeacherCache
from common.teachers.encoder_cache import EncoderStateCache, content_keys, shared_cache
from common.teachers.protocol import Teacher
from common.training import (
    TrainSkips,
    ValidationLog,
    configure_optim,
    full_tensor,
    gathered_params,
    shard_student,
    unsharded_copy,
)


class LossWeights(NamedTuple):
    """Weights of the loss terms at one step."""

    phase: str  # "A" (teacher KD) or "B" (self-KD)
    lam: float  # teacher KD weight
    beta: float  # self-KD weight
    ce: float  # cross-entropy weight


class AskdModule(L.LightningModule):
    def __init__(
        self,
        cfg: AskdConfig,
        teacher: Teacher,
        student: Optional[torch.nn.Module] = None,
        cache: Optional[TeacherCache] = None,
        dev_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.student = (
            student
            if student is not None
            else build_student(teacher.model, cfg.student.n_decoder_layers, cfg.student.freeze_encoder)
        )
        object.__setattr__(self, "teacher", teacher)  # frozen, not a submodule: never in state_dict or optimizer
        object.__setattr__(self, "self_teacher", None)  # saved through on_save_checkpoint
        self.processor = teacher.processor
        self.cache = cache
        self.dev_names = list(dev_names)
        self.val_log = ValidationLog(self.dev_names)
        self.train_skips = TrainSkips()
        self._cache_hits = 0
        self._pending_self_teacher: Optional[dict] = None

    # -- schedules ------------------------------------------------------------------------------
    @property
    def boundary_step(self) -> int:
        sk = self.cfg.self_kd
        return int(sk.boundary * self.cfg.trainer.max_steps) if sk.enabled else self.cfg.trainer.max_steps

    def weights(self, step: int) -> LossWeights:
        """The loss weights at a global step: phase A (1 - lambda) CE + lambda KD (or a constant CE weight), phase B
        (1 - beta) CE + beta self-KD; lambda is 0 without a teacher."""
        c, sk = self.cfg.curriculum, self.cfg.self_kd
        if step < self.boundary_step:
            lam = teacher_weight(c, step / max(1, self.boundary_step))
            lam = lam if self.cfg.teacher_source != "none" else 0.0
            return LossWeights("A", lam, 0.0, (1.0 - lam) if c.ce_weight is None else c.ce_weight)
        rb = (step - self.boundary_step) / max(1, self.cfg.trainer.max_steps - self.boundary_step)
        beta = self_kd_weight(sk, rb)
        return LossWeights("B", 0.0, beta, 1.0 - beta)

    # -- forward pieces -------------------------------------------------------------------------
    @property
    def shared_encoder(self) -> bool:
        """The student's encoder is the teacher's, frozen: one encoder pass feeds student, teacher and self-teacher."""
        return self.cfg.student.freeze_encoder and self.teacher is not None

    @property
    def encoder_cache(self) -> EncoderStateCache:
        """The process's store of the frozen encoder's states (shared with every model of this process that has the
        same encoder weights: the teacher's evaluation, the other students, OPD's teacher)."""
        return shared_cache(self.teacher.model.get_encoder(), self.cfg.encoder_cache_mb)

    def _encode(self, feats: torch.Tensor, ids: Optional[list[str]] = None) -> torch.Tensor:
        """Encoder states of the batch; with the shared frozen encoder and ``encoder_cache_mb``, training utterances
        (``ids``) whose input another step, epoch or model of this process has encoded come from the cache."""
        if self.shared_encoder:
            with torch.no_grad():
                if ids is not None and self.cfg.encoder_cache_mb:
                    enc, hits = self.encoder_cache.states(
                        content_keys(feats), lambda rows: self.teacher.encode({"input_features": feats[rows]})
                    )
                    self._cache_hits = hits
                else:
                    enc = self.teacher.encode({"input_features": feats})
                return enc.to(feats.device, feats.dtype)
        return self.student.model.encoder(feats).last_hidden_state

    @torch.no_grad()
    def _teacher_encoder_states(self, feats: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        """The teacher's own (frozen) encoder states: the student's when they share the frozen encoder, else a pass of
        the teacher's encoder (never the student's live, training encoder)."""
        if self.shared_encoder:
            return enc.to(self.teacher.device)
        return self.teacher.encode({"input_features": feats})

    @torch.no_grad()
    def _self_teacher_encoder_states(self, feats: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        """The self-teacher's own encoder states (its frozen snapshot of the encoder when the encoder trains)."""
        if self.cfg.student.freeze_encoder:
            return enc.detach()
        return self.self_teacher.model.encoder(feats).last_hidden_state

    @staticmethod
    def _decoder_logits(model, enc, batch) -> torch.Tensor:
        out = model.model.decoder(
            input_ids=batch["decoder_input_ids"],
            attention_mask=batch["decoder_attention_mask"],
            encoder_hidden_states=enc,
        )
        return model.proj_out(out.last_hidden_state)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        self.train_skips.count(self, batch)  # unreadable audio under bad_sample_policy=skip: counted, never silent
        if not batch["ids"]:
            return None  # every utterance of the batch was skipped (bad_sample_policy=skip)
        phase, lam, beta, ce_w = self.weights(self.global_step)
        labels = batch["labels"]
        mask = labels != -100
        enc = self._encode(batch["input_features"], batch["ids"])
        s_logits = self._decoder_logits(self.student, enc, batch)  # (B, T, V)
        ce = cross_entropy(s_logits, labels)
        logs = {"ce": ce, "lambda": lam, "beta": beta, "phase": float(phase == "B")}
        if self.cfg.encoder_cache_mb:
            logs["encoder_cache_hits"] = float(self._cache_hits)
        if phase == "A":
            kd = torch.zeros((), device=ce.device)
            if lam > 0 and self.cfg.teacher_source == "online":
                with torch.no_grad():
                    t_enc = self._teacher_encoder_states(batch["input_features"], enc)
                    t_logits = self.teacher.decoder_logits(t_enc, batch).to(s_logits.device, s_logits.dtype)
                top1_prob, top1 = torch.softmax(t_logits.float(), -1).max(-1)
                w = adaptive_token_weights(self.cfg.curriculum.adaptive, lam, top1, top1_prob, labels)
                kd = kd_kl(s_logits, t_logits, mask, self.cfg.curriculum.tau, weights=w)
            elif lam > 0 and self.cfg.teacher_source == "cache":
                ids, lps, log_z = self.cache.topk_at_labels(batch["ids"], labels)
                top1, top1_prob = ids[..., 0], lps[..., 0].exp()
                w = adaptive_token_weights(self.cfg.curriculum.adaptive, lam, top1, top1_prob, labels)
                kd = sparse_kd_kl(s_logits, ids, lps, mask, self.cfg.curriculum.tau, weights=w, teacher_log_z=log_z)
            if lam > 0 and self.cfg.teacher_source != "none":
                logs["teacher_label_agreement"] = ((top1 == labels) & mask).sum() / mask.sum().clamp(min=1)
            loss = ce_w * ce + kd
            logs["kd"] = kd
        else:
            with torch.no_grad():
                st_enc = self._self_teacher_encoder_states(batch["input_features"], enc)
                self_logits = self._decoder_logits(self.self_teacher, st_enc, batch)
            skd = kd_kl(s_logits, self_logits, mask, self.cfg.self_kd.tau)
            loss = ce_w * ce + beta * skd
            logs["self_kd"] = skd
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=len(batch["ids"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    # -- self-teacher lifecycle -----------------------------------------------------------------
    def _copy_student(self) -> torch.nn.Module:
        t = unsharded_copy(self.student).eval()  # FSDP2: the gathered weights, replicated
        t.requires_grad_(False)
        return t

    def on_train_start(self) -> None:
        if self._pending_self_teacher is not None:  # resumed: rebuild the self-teacher exactly
            object.__setattr__(self, "self_teacher", self._copy_student())
            self.self_teacher.load_state_dict(self._pending_self_teacher)
            self._pending_self_teacher = None
        elif self.cfg.self_kd.enabled and self.cfg.self_kd.self_teacher == "ema" and self.self_teacher is None:
            object.__setattr__(self, "self_teacher", self._copy_student())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        sk = self.cfg.self_kd
        if sk.enabled and self.global_step >= self.boundary_step and self.self_teacher is None:
            object.__setattr__(self, "self_teacher", self._copy_student())  # snapshot / first prev-epoch copy

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The EMA self-teacher follows each optimizer step (not each micro-batch under gradient accumulation), and
        is updated before any callback's ``on_train_batch_end``, so a checkpoint taken there is consistent."""
        super().optimizer_step(*args, **kwargs)
        sk = self.cfg.self_kd
        if sk.enabled and sk.self_teacher == "ema" and self.self_teacher is not None:
            with torch.no_grad():
                for e, p in zip(self.self_teacher.parameters(), self.student.parameters()):
                    e.lerp_(full_tensor(p.detach()), 1.0 - sk.ema_decay)

    def on_train_epoch_end(self) -> None:
        sk = self.cfg.self_kd
        if sk.enabled and sk.self_teacher == "prev_epoch" and self.global_step >= self.boundary_step:
            object.__setattr__(self, "self_teacher", self._copy_student())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        st = self.self_teacher
        if st is None and self._pending_self_teacher is not None:  # restored but not rebuilt yet (a resume that
            checkpoint["askd"] = {  # trains no further step, e.g. after a signal during the final decoding)
                "self_teacher": self._pending_self_teacher,
                "student_config": self.student.config.to_dict(),
            }
            return
        checkpoint["askd"] = {
            "self_teacher": None if st is None else {k: v.cpu() for k, v in st.state_dict().items()},
            "student_config": self.student.config.to_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_self_teacher = checkpoint.get("askd", {}).get("self_teacher")

    # -- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not batch["ids"]:
            self.val_log.count_skipped(batch, dataloader_idx)
            return
        with gathered_params(self.student):
            hyps = WhisperTranscriber(self.student, self.processor).transcribe(batch, self.cfg.decoding)
        if "labels" in batch:  # teacher-forced CE on the references: the dev loss
            logits = self._decoder_logits(self.student, self._encode(batch["input_features"]), batch)
            n = (batch["labels"] != -100).sum()
            self.val_log.add_loss(cross_entropy(logits, batch["labels"]), n, dataloader_idx)
        self.val_log.update(batch, hyps, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self.val_log.transcribe_samples(self, self.teacher)
        self.val_log.log(self)

    def configure_model(self) -> None:
        shard_student(self, self.student)  # FSDP2 (trainer.strategy: fsdp2) only; a no-op otherwise

    def configure_optimizers(self):
        return configure_optim(self.student.parameters(), self.cfg.optim, self.cfg.trainer.max_steps)
