"""``AudioDataModule``: Lhotse cuts -> duration-bucketed batches -> the model's features and tokens.

Features and tokenisation are not hard-coded: a *collator* (``(audios, texts, languages) -> dict``),
built from the model's processor/tokenizer, is injected. The dataset loads audio with
:func:`common.audio.load_audio` (mono, 16 kHz) and applies the bad-sample policy to audio that fails
to decode: ``error`` raises naming the file, ``skip`` drops the utterance and reports it in the batch
(``batch["skipped"]``) so the consumer can count it.

Batch size is global seconds of audio (``batch_seconds``); each rank gets ``batch_seconds / world_size``.
The training sampler's state is part of the datamodule state, so a resumed run continues mid-epoch
with the same batches. Trainers must use ``use_distributed_sampler=False`` (Lhotse samplers shard
by rank themselves).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import lightning as L
import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

from common.audio import AudioError, load_audio
from common.data.manifests import ValidationReport, load_manifest, set_name

Collator = Callable[[list[np.ndarray], list[str], list[str]], dict[str, Any]]


@dataclass
class DataConfig:
    """Where the data is and how it is batched."""

    train: list[str] = field(default_factory=list)
    """Training manifests (JSONL, Lhotse, Kaldi dir or hf:NAME[:SPLIT]); concatenated."""
    dev: list[str] = field(default_factory=list)
    """Validation manifests; each is a set named after its parent folder."""
    test: list[str] = field(default_factory=list)
    """Test manifests; each is a set named after its parent folder."""
    train_audio_only: bool = False
    """The training manifests are audio only (JSONL rows need no transcript; any transcript is dropped): for stages
    that never read references (Ark-ASR TD with teacher transcripts, OPD). Dev and test sets keep their references."""
    batch_seconds: float = 120.0
    """Global seconds of audio per batch (divided by the world size per rank)."""
    max_cuts: Optional[int] = None
    """Upper bound on utterances per batch per rank (None: no bound)."""
    num_buckets: int = 8
    """Duration buckets of the training sampler."""
    min_duration: float = 0.2
    """Utterances shorter than this (s) are left out of training."""
    max_duration: float = 30.0
    """Utterances longer than this (s) are left out of training (Whisper's window is 30 s)."""
    shuffle: bool = True
    """Shuffle training batches."""
    seed: int = 0
    """Sampler seed."""
    num_workers: int = 0
    """DataLoader worker processes."""
    bad_sample_policy: Literal["error", "skip"] = "error"
    """error: refuse to start on a bad manifest row / fail on undecodable audio; skip: drop and count."""
    drop_last: bool = False
    """Drop the last incomplete training batch."""

    def __post_init__(self) -> None:
        if self.batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be > 0, got {self.batch_seconds}")
        if not 0 <= self.min_duration < self.max_duration:
            raise ValueError(f"need 0 <= min_duration < max_duration, got {self.min_duration}, {self.max_duration}")
        if self.num_buckets < 2:
            raise ValueError(f"num_buckets must be >= 2 (Lhotse's bucketing sampler), got {self.num_buckets}")


def cut_audio(cut) -> np.ndarray:
    """A cut's audio, mono float32 at 16 kHz: files through :func:`common.audio.load_audio`; other sources (Lhotse
    Shar shards, in-memory audio) through Lhotse, then down-mixed and resampled. Failures are ``AudioError``s."""
    src = cut.recording.sources[0]
    if src.type == "file":
        return load_audio(src.source, offset=cut.start, duration=cut.duration)
    from common.audio import TARGET_SR, resample

    try:
        audio = cut.load_audio()
    except Exception as err:  # lhotse raises many types for a corrupt shard member
        raise AudioError(f"{cut.id}: cannot decode its {src.type} audio: {err}") from None
    audio = np.asarray(audio, dtype=np.float32)
    audio = audio.mean(0) if audio.ndim == 2 else audio
    if audio.size == 0:
        raise AudioError(f"{cut.id}: empty audio")
    return resample(audio, cut.sampling_rate, TARGET_SR) if cut.sampling_rate != TARGET_SR else audio


class AsrDataset(torch.utils.data.Dataset):
    """Map a ``CutSet`` batch (from a Lhotse sampler) to the collator's tensors plus metadata."""

    def __init__(self, collate: Collator, policy: Literal["error", "skip"] = "error") -> None:
        self.collate = collate
        self.policy = policy

    def __getitem__(self, cuts: CutSet) -> dict[str, Any]:
        audios, texts, langs, declared, ids, durations, skipped = [], [], [], [], [], [], []
        for cut in cuts:
            try:
                audio = cut_audio(cut)
            except AudioError as err:
                if self.policy == "error":
                    raise
                skipped.append((cut.id, str(err)))
                continue
            sup = cut.supervisions[0]
            audios.append(audio)
            texts.append(sup.text)
            langs.append(sup.language)
            declared.append(not (sup.custom or {}).get("language_detected", False))
            ids.append(cut.id)
            durations.append(cut.duration)
        batch: dict[str, Any] = self.collate(audios, texts, langs) if audios else {}
        batch.update(
            ids=ids, texts=texts, languages=langs, language_declared=declared, durations=durations, skipped=skipped
        )
        batch.setdefault("audios", audios)  # waveforms: teachers compute their own features, TensorBoard plays a few
        return batch


def _dist_info(trainer: Optional[L.Trainer]) -> tuple[int, int]:
    if trainer is not None:
        return trainer.world_size, trainer.global_rank
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def eval_loader(
    cuts: CutSet,
    collate: Collator,
    batch_seconds: float,
    policy: str = "error",
    num_workers: int = 0,
    max_cuts: Optional[int] = None,
    world_size: int = 1,
    rank: int = 0,
) -> torch.utils.data.DataLoader:
    """Sequential (unshuffled) batches of ``cuts``, sharded by rank: rank r gets cuts r, r + W, r + 2W, ... so that
    every utterance is scored exactly once across the ranks (a distributed sampler would pad the last batch with
    repeats, which would count some utterances twice in the synced metric)."""
    if world_size > 1:
        cuts = cuts.subset(cut_ids=list(cuts.ids)[rank::world_size])
    with warnings.catch_warnings():  # cuts are validated and held in memory on purpose
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet")
        sampler = DynamicCutSampler(
            cuts, max_duration=batch_seconds, max_cuts=max_cuts, shuffle=False, world_size=1, rank=0
        )
    return torch.utils.data.DataLoader(
        AsrDataset(collate, policy), sampler=sampler, batch_size=None, num_workers=num_workers
    )


class AudioDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, collate_train: Collator, collate_eval: Optional[Collator] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.collate_train = collate_train
        self.collate_eval = collate_eval or collate_train
        self.train_cuts: Optional[CutSet] = None
        self.dev_sets: dict[str, CutSet] = {}
        self.test_sets: dict[str, CutSet] = {}
        self.reports: list[ValidationReport] = []
        self.n_outside_duration = 0  # training utterances outside [min_duration, max_duration], left out
        self._sampler: Optional[DynamicBucketingSampler] = None
        self._sampler_state: Optional[dict] = None

    def skip_report(self) -> dict[str, Any]:
        """What the data left out, counted: invalid rows per manifest (bad_sample_policy: skip) and training
        utterances outside the duration range. Audio that fails to decode mid-training is counted by the module
        (``common.training.TrainSkips``) and added to the fit summary as ``train_undecodable``."""
        return {
            "invalid_rows": {r.manifest: r.n_bad for r in self.reports if r.n_bad},
            "train_outside_duration": self.n_outside_duration,
        }

    # -- loading --------------------------------------------------------------------------------
    def _load(self, specs: Sequence[str], audio_only: bool = False) -> dict[str, CutSet]:
        out: dict[str, CutSet] = {}
        for spec in specs:
            cuts, report = load_manifest(spec, self.cfg.bad_sample_policy, audio_only=audio_only)
            self.reports.append(report)
            name = set_name(spec)
            if name in out:
                raise ValueError(f"two manifests give the set name {name!r}; put them in differently named folders")
            out[name] = cuts
        return out

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_cuts is None and self.cfg.train:
            train = list(self._load(self.cfg.train, audio_only=self.cfg.train_audio_only).values())
            cuts = train[0] if len(train) == 1 else CutSet.from_cuts(c for cs in train for c in cs)
            lo, hi = self.cfg.min_duration, self.cfg.max_duration
            n_before = len(cuts)
            self.train_cuts = cuts.filter(lambda c: lo <= c.duration <= hi).to_eager()
            self.n_outside_duration = n_before - len(self.train_cuts)
            if len(self.train_cuts) == 0:
                raise ValueError(f"no training utterance lasts between {lo} and {hi} s")
        if not self.dev_sets and self.cfg.dev:
            self.dev_sets = self._load(self.cfg.dev)
        if not self.test_sets and self.cfg.test:
            self.test_sets = self._load(self.cfg.test)

    # -- loaders --------------------------------------------------------------------------------
    def train_sampler(self) -> DynamicBucketingSampler:
        world, rank = _dist_info(getattr(self, "trainer", None))
        with warnings.catch_warnings():  # cuts are validated and held in memory on purpose
            warnings.filterwarnings("ignore", message=".*eagerly read CutSet")
            sampler = self._make_sampler(world, rank)
        if self._sampler_state is not None:
            saved_world = self._sampler_state.get("world_size", world)
            if saved_world == world:
                sampler.load_state_dict(self._sampler_state)
            else:  # weights, optimizer and step resume; the data order cannot be carried to another world size
                warnings.warn(
                    f"the checkpoint's data position was saved with world size {saved_world}, this run has {world}: "
                    "the training data restarts at the beginning of an epoch",
                    stacklevel=2,
                )
            self._sampler_state = None
        return sampler

    def num_buckets(self) -> int:
        """``data.num_buckets``, clamped to the training cuts there are (Lhotse's bucketing cannot make more buckets
        than cuts: a small set, or a Distil-Whisper WER filter that kept 2 of 12, stopped with a traceback); fewer
        than 2 cuts cannot be bucketed and are one line."""
        n = len(self.train_cuts) if self.train_cuts is not None else 0
        if n < 2:
            raise ValueError(
                f"{n} training utterance(s) left in data.train after validation, duration limits and any teacher "
                "filter: need at least 2"
            )
        return max(2, min(self.cfg.num_buckets, n))

    def _make_sampler(self, world: int, rank: int) -> DynamicBucketingSampler:
        return DynamicBucketingSampler(
            self.train_cuts,
            max_duration=self.cfg.batch_seconds / world,
            max_cuts=self.cfg.max_cuts,
            num_buckets=self.num_buckets(),
            shuffle=self.cfg.shuffle,
            drop_last=self.cfg.drop_last,
            seed=self.cfg.seed,
            world_size=world,
            rank=rank,
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        if self.train_cuts is None:
            raise RuntimeError("no training manifests configured (data.train)")
        self._sampler = self.train_sampler()
        ds = AsrDataset(self.collate_train, self.cfg.bad_sample_policy)
        return torch.utils.data.DataLoader(ds, sampler=self._sampler, batch_size=None, num_workers=self.cfg.num_workers)

    def _eval_loaders(self, sets: dict[str, CutSet]) -> list[torch.utils.data.DataLoader]:
        world, rank = _dist_info(getattr(self, "trainer", None))
        return [
            eval_loader(
                c,
                self.collate_eval,
                self.cfg.batch_seconds / world,
                self.cfg.bad_sample_policy,
                self.cfg.num_workers,
                self.cfg.max_cuts,
                world,
                rank,
            )
            for c in sets.values()
        ]

    def val_dataloader(self):
        return self._eval_loaders(self.dev_sets)

    def test_dataloader(self):
        return self._eval_loaders(self.test_sets)

    @property
    def dev_names(self) -> list[str]:
        return list(self.dev_sets)

    # -- resumable sampler state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The training sampler's position, counted in batches the trainer has processed.

        Lightning fetches one batch ahead, so the sampler itself is a batch further than training; the
        saved position is corrected to what was trained on, so a resumed run sees exactly the next batch.
        """
        if self._sampler is None:
            return {}

        sd = copy.deepcopy(self._sampler.state_dict())
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            diag = sd["diagnostics"]
            stats = diag["stats_per_epoch"].get(diag["current_epoch"])
            if stats is not None:
                stats["kept_batches"] = trainer.fit_loop.epoch_loop.batch_progress.current.processed
                stats["discarded_batches"] = 0
        return {"sampler": sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sampler_state = state.get("sampler")
