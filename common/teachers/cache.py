"""Teacher cache: a manifest's teacher transcripts and top-k log-probs at the reference positions.

Off-policy teacher outputs do not change between epochs or sweep runs, so they are computed once:
``asr-distill cache-teacher -c CONFIG``. Layout of the cache directory::

    index.json              stamp (what the cache was built from) + the list of finished shards
    shard-00000.safetensors per utterance, concatenated over target positions:
                            topk_ids (N, k) int32, topk_logprobs (N, k) float32, target_ids (N,) int32,
                            target_logprobs (N,) float32, log_z_tau (N,) float32 (the teacher's tempered
                            log-partition at the cache's tau), offsets (n_utts + 1,) int64;
                            metadata "utts": JSON list of {id, ref, hyp, hyp_ids, language, errors, ref_units}

Shards are written atomically and the index is updated after each, so a killed run restarts where it
stopped without recomputing finished shards. The stamp hashes the teacher (name and weights), its tokenizer,
the manifest and the scoring options; a cache whose stamp differs from the requested one is refused, naming
what differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from common.data.datamodule import cut_audio
from common.data.manifests import load_manifest, manifest_digest
from common.io import atomic_write_json, publish
from common.metrics import ErrorRate, score_utterance
from common.teachers import TeacherConfig, build_teacher
from common.training.precision import autocast_for

INDEX = "index.json"


class CacheMismatchError(ValueError):
    """The cache on disk was built from something else than what is asked for."""


@dataclass
class CacheConfig:
    """``asr-distill cache-teacher``: which teacher on which manifest, stored where."""

    manifest: Union[str, list[str]]
    """Manifest(s) whose references are scored and whose audio is transcribed (a list: one cache for several
    training sets, e.g. the Distil-Whisper mix)."""
    out_dir: str
    """Cache directory (resumed when its stamp matches)."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The frozen teacher."""
    top_k: int = 8
    """Teacher top-k ids/log-probs kept per reference position."""
    tau: float = 2.0
    """The KD temperature this cache serves: its tempered log-partition is stored per position, so cached KD knows
    the exact tempered mass of the top-k (and of the rest of the vocabulary). Must equal the fit's KD tau."""
    shard_size: int = 64
    """Utterances per shard (the unit of resumption)."""
    batch_size: int = 8
    """Utterances per teacher batch."""
    generate: bool = True
    """Also store the teacher's greedy transcripts (pseudo-labels) with their error counts."""
    max_new_tokens: int = 128
    """Generation length limit."""
    bad_sample_policy: Literal["error", "skip"] = "error"
    """Manifest validation policy."""
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    """bf16-mixed: the teacher scores and generates under bf16 autocast (the precision of the fit it serves; the
    stored log-probs are float32 either way)."""
    audio_only: bool = False
    """The manifests are audio only (no references): transcripts are generated, nothing is scored against a reference
    (for Ark-ASR TD on untranscribed audio; the top-k at reference positions is then only the stop position)."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.shard_size < 1 or self.batch_size < 1:
            raise ValueError("top_k, shard_size and batch_size must be >= 1")
        if self.tau <= 0:
            raise ValueError("tau must be > 0")
        if isinstance(self.manifest, list) and not self.manifest:
            raise ValueError("manifest: at least one manifest")

    @property
    def manifests(self) -> list[str]:
        return [self.manifest] if isinstance(self.manifest, str) else list(self.manifest)


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def teacher_fingerprint(teacher) -> dict[str, str]:
    """Hashes of the teacher weights (every tensor's sum and shape, cheap but sensitive) and of its vocabulary."""
    sums = [
        (n, list(p.shape), round(float(p.detach().double().sum()), 6)) for n, p in teacher.model.state_dict().items()
    ]
    vocab = sorted(teacher.tokenizer.get_vocab().items())
    return {"weights": _digest(sums), "tokenizer": _digest(vocab)}


def make_stamp(cfg: CacheConfig, teacher) -> dict[str, Any]:
    m_hash = manifest_digest(cfg.manifests)
    fp = teacher_fingerprint(teacher)
    return {
        "teacher": f"{cfg.teacher.kind}:{cfg.teacher.name_or_path}",
        "teacher_dtype": cfg.teacher.dtype,
        "teacher_weights": fp["weights"],
        "tokenizer": fp["tokenizer"],
        "manifest": m_hash,
        "top_k": cfg.top_k,
        "tau": cfg.tau,
        "shard_size": cfg.shard_size,
        "generate": cfg.generate,
        "max_new_tokens": cfg.max_new_tokens,
        "precision": cfg.precision,
        "format": 2,
    }


def check_stamp(found: dict[str, Any], wanted: dict[str, Any], where: Path) -> None:
    diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    if diff:
        raise CacheMismatchError(
            f"teacher cache {where} was built with a different {', '.join(diff)} "
            f"({'; '.join(f'{k}: {found.get(k)!r} != {wanted.get(k)!r}' for k in diff)}); "
            f"use another out_dir or rebuild it"
        )


def build_cache(
    cfg: CacheConfig, teacher=None, on_shard: Optional[Callable[[int], None]] = None, progress: bool = True
) -> dict[str, Any]:
    """Build (or finish) the cache; return the index."""
    from tqdm import tqdm

    out = Path(cfg.out_dir)
    cuts = [c for m in cfg.manifests for c in load_manifest(m, cfg.bad_sample_policy, audio_only=cfg.audio_only)[0]]
    teacher = teacher or build_teacher(cfg.teacher)
    stamp = make_stamp(cfg, teacher)
    index: dict[str, Any] = {"stamp": stamp, "shards": [], "complete": False}
    if (out / INDEX).is_file():
        index = json.loads((out / INDEX).read_text())
        check_stamp({"precision": "32-true", **index["stamp"]}, stamp, out)  # caches stamped before precision: fp32
    out.mkdir(parents=True, exist_ok=True)
    done = {s["file"] for s in index["shards"] if (out / s["file"]).is_file()}
    n_shards = (len(cuts) + cfg.shard_size - 1) // cfg.shard_size
    bar = tqdm(total=n_shards, desc="teacher cache", unit="shard", disable=not progress)
    for si in range(n_shards):
        name = f"shard-{si:05d}.safetensors"
        bar.update(1)
        if name in done:
            continue
        shard = cuts[si * cfg.shard_size : (si + 1) * cfg.shard_size]
        tensors, utts = _compute_shard(cfg, teacher, shard)
        save_file(tensors, str(out / f".{name}.tmp"), metadata={"utts": json.dumps(utts, ensure_ascii=False)})
        publish(out / f".{name}.tmp")  # safetensors writes 0600
        (out / f".{name}.tmp").replace(out / name)
        index["shards"] = [s for s in index["shards"] if s["file"] != name] + [
            {"file": name, "ids": [u["id"] for u in utts]}
        ]
        index["shards"].sort(key=lambda s: s["file"])
        atomic_write_json(out / INDEX, index)
        if on_shard is not None:
            on_shard(si)
    bar.close()
    index["complete"] = True
    index["summary"] = _summary(out, index)
    atomic_write_json(out / INDEX, index)
    return index


def _compute_shard(cfg: CacheConfig, teacher, cuts) -> tuple[dict[str, torch.Tensor], list[dict]]:
    parts: dict[str, list[torch.Tensor]] = {
        "topk_ids": [],
        "topk_logprobs": [],
        "target_ids": [],
        "target_logprobs": [],
        "log_z_tau": [],
    }
    lengths, utts = [], []
    for b in range(0, len(cuts), cfg.batch_size):
        chunk = cuts[b : b + cfg.batch_size]
        audios = [cut_audio(c) for c in chunk]  # files or Shar
        refs = [c.supervisions[0].text for c in chunk]
        langs = [c.supervisions[0].language for c in chunk]
        batch = teacher.prepare(audios, langs)
        targets = [teacher.encode_text(r, l) for r, l in zip(refs, langs)]
        with autocast_for(cfg.precision, cfg.teacher.device):  # the model calls only: the audio stays float32
            shared = {"encoder_out": teacher.encode(batch)} if teacher.reusable_encoder else {}  # one encoder pass
            sc = teacher.score(batch, targets, top_k=cfg.top_k, tau=cfg.tau, **shared)
            gen = teacher.generate(batch, max_new_tokens=cfg.max_new_tokens, **shared) if cfg.generate else None
        for i, (c, ref, lang, tgt) in enumerate(zip(chunk, refs, langs, targets)):
            n = len(tgt)
            parts["topk_ids"].append(sc.topk_ids[i, :n].to(torch.int32).cpu())
            parts["topk_logprobs"].append(sc.topk_logprobs[i, :n].float().cpu())
            parts["target_ids"].append(torch.tensor(tgt, dtype=torch.int32))
            parts["target_logprobs"].append(sc.target_logprobs[i, :n].float().cpu())
            parts["log_z_tau"].append(sc.log_z_tau[i, :n].float().cpu())
            lengths.append(n)
            u: dict[str, Any] = {"id": c.id, "ref": ref, "language": lang}
            if gen is not None:
                u.update(hyp=gen.texts[i], hyp_ids=gen.token_ids[i], errors=None, ref_units=None)
                if ref:  # audio-only manifests have no reference to score the transcript against
                    s = score_utterance(ref, gen.texts[i], lang)
                    u.update(errors=s.errors, ref_units=s.ref_units)
            utts.append(u)
    tensors = {k: torch.cat(v) for k, v in parts.items()}
    tensors["offsets"] = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    return tensors, utts


def _shard_utts(path: Path) -> list[dict[str, Any]]:
    """The per-utterance records stored in a shard's metadata (the tensors are not read)."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["utts"])


def _summary(out: Path, index: dict[str, Any]) -> dict[str, Any]:
    metric = ErrorRate()
    n = 0
    for s in index["shards"]:
        utts = _shard_utts(out / s["file"])
        n += len(utts)
        scored = [u for u in utts if u.get("errors") is not None]
        if scored:
            metric.update([u["hyp"] for u in scored], [u["ref"] for u in scored], [u["language"] for u in scored])
    res = {k: v.item() for k, v in metric.compute().items()} if metric.n_utts > 0 else {}
    return {"n_utts": n, "teacher_error_rate": res.get("error_rate"), "teacher_ref_units": res.get("ref_units")}


def is_all_upper_case(text: str) -> bool:
    """Text with cased letters, none of them lower case ("HELLO WORLD"; Mandarin has no case: never)."""
    cased = [c for c in text if c.lower() != c.upper()]
    return bool(cased) and all(c.isupper() for c in cased)


@dataclass
class CachedUtterance:
    id: str
    ref: str
    language: str
    topk_ids: torch.Tensor  # (n, k) long, teacher vocabulary
    topk_logprobs: torch.Tensor  # (n, k) float32
    target_ids: torch.Tensor  # (n,) long: the reference transcript in the teacher vocabulary (+ stop)
    target_logprobs: torch.Tensor  # (n,) float32
    log_z_tau: Optional[torch.Tensor] = None  # (n,) float32: log sum_V exp(logp / tau) at the cache's tau
    hyp: Optional[str] = None
    hyp_ids: Optional[list[int]] = None
    errors: Optional[int] = None
    ref_units: Optional[int] = None

    @property
    def teacher_error_rate(self) -> Optional[float]:
        return None if self.errors is None else self.errors / max(1, self.ref_units or 0)


class TeacherCache:
    """Read access to a finished cache (all shards loaded; the cache of a CPU-scale run is small)."""

    def __init__(self, path: str | Path, expected_stamp: Optional[dict[str, Any]] = None) -> None:
        self.path = Path(path)
        if not (self.path / INDEX).is_file():
            raise FileNotFoundError(f"no teacher cache at {self.path} (run asr-distill cache-teacher first)")
        self.index = json.loads((self.path / INDEX).read_text())
        if not self.index.get("complete"):
            raise CacheMismatchError(
                f"teacher cache {self.path} is incomplete; rerun asr-distill cache-teacher to finish it"
            )
        if expected_stamp is not None:
            check_stamp(self.index["stamp"], expected_stamp, self.path)
        self._items: dict[str, CachedUtterance] = {}
        for s in self.index["shards"]:
            t = load_file(str(self.path / s["file"]))
            utts = _shard_utts(self.path / s["file"])
            off = t["offsets"].tolist()
            for i, u in enumerate(utts):
                a, b = off[i], off[i + 1]
                self._items[u["id"]] = CachedUtterance(
                    id=u["id"],
                    ref=u["ref"],
                    language=u["language"],
                    topk_ids=t["topk_ids"][a:b].long(),
                    topk_logprobs=t["topk_logprobs"][a:b],
                    target_ids=t["target_ids"][a:b].long(),
                    target_logprobs=t["target_logprobs"][a:b],
                    log_z_tau=t["log_z_tau"][a:b] if "log_z_tau" in t else None,
                    hyp=u.get("hyp"),
                    hyp_ids=u.get("hyp_ids"),
                    errors=u.get("errors"),
                    ref_units=u.get("ref_units"),
                )

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, uid: str) -> bool:
        return uid in self._items

    def __getitem__(self, uid: str) -> CachedUtterance:
        try:
            return self._items[uid]
        except KeyError:
            raise KeyError(f"utterance {uid!r} is not in the teacher cache {self.path}") from None

    @property
    def stamp(self) -> dict[str, Any]:
        return self.index["stamp"]

    def check_for(self, teacher: Any, manifests: list[str], tau: Optional[float] = None) -> None:
        """Refuse, in one line naming what differs, a cache built from another teacher (weights or tokenizer; skipped
        when ``teacher`` is None), other manifests, or (``tau``: tempered KD reads it) another temperature or format."""
        st = self.stamp
        found: dict[str, Any] = {"manifest": st.get("manifest")}
        wanted: dict[str, Any] = {"manifest": manifest_digest(list(manifests))}
        if teacher is not None:
            fp = teacher_fingerprint(teacher)
            found.update(teacher_weights=st.get("teacher_weights"), tokenizer=st.get("tokenizer"))
            wanted.update(teacher_weights=fp["weights"], tokenizer=fp["tokenizer"])
        if tau is not None:
            found.update(tau=st.get("tau"), format=st.get("format"))
            wanted.update(tau=tau, format=2)
        check_stamp(found, wanted, self.path)

    def coverage(self, cuts, policy: str = "error"):
        """The cuts the cache holds. Missing utterances are refused by name (policy ``error``) or dropped and counted
        (``skip``). Returns ``(cuts, n_missing)``."""
        missing = [c.id for c in cuts if c.id not in self._items]
        if missing and policy == "error":
            raise CacheMismatchError(
                f"teacher cache {self.path} has no entry for {len(missing)} training utterance(s), e.g. "
                f"{', '.join(missing[:3])}; rebuild it for these manifests or set data.bad_sample_policy=skip"
            )
        if not missing:
            return cuts, 0
        keep = set(self._items)
        return cuts.filter(lambda c: c.id in keep).to_eager(), len(missing)

    def topk_at_labels(
        self, ids: Sequence[str], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher top-k ids (B, T, k; -1 elsewhere), log-probs (B, T, k; -inf elsewhere) and tempered log-partition
        (B, T) from the cache, laid out at the label positions (cache rows = reference + stop). The cached target ids
        must be exactly the labels: a cache that scored another transcript is refused, naming the utterance."""
        B, T = labels.shape
        k = self.stamp["top_k"]
        dev = labels.device
        top = torch.full((B, T, k), -1, dtype=torch.long, device=dev)
        lps = torch.full((B, T, k), float("-inf"), device=dev)
        log_z = torch.zeros((B, T), device=dev)
        for i, uid in enumerate(ids):
            u = self[uid]
            pos = (labels[i] != -100).nonzero().squeeze(-1)
            if len(pos) != len(u.target_ids) or not torch.equal(labels[i, pos].cpu(), u.target_ids):
                raise CacheMismatchError(
                    f"teacher cache {self.path}: utterance {uid}: its cached target ids differ from the "
                    f"training labels ({len(u.target_ids)} vs {len(pos)} tokens); the cache scored another transcript"
                    " or tokenisation: rebuild it for these references"
                )
            top[i, pos], lps[i, pos] = u.topk_ids.to(dev), u.topk_logprobs.to(dev)
            log_z[i, pos] = u.log_z_tau.to(dev)
        return top, lps, log_z

    def pseudo_labels(self, max_error_rate: Optional[float] = None) -> dict[str, str]:
        """Teacher transcripts by utterance id. With ``max_error_rate``, Distil-Whisper's filter as published: keep a
        transcript only where the teacher's normalised error rate against the reference is *below* it, and drop
        transcripts written all in upper case (a teacher echoing a shouting or upper-case-only training style)."""
        out = {}
        for uid, u in self._items.items():
            if u.hyp is None:
                raise ValueError(f"teacher cache {self.path} holds no transcripts (built with generate=false)")
            if max_error_rate is not None:
                rate = u.teacher_error_rate
                if rate is None or rate >= max_error_rate or is_all_upper_case(u.hyp):
                    continue
            out[uid] = u.hyp
        return out


def open_for_training(
    dm: Any,
    path: str,
    teacher: Optional[Any],
    manifests: list[str],
    policy: str,
    tau: Optional[float] = None,
    relabel: bool = False,
    max_error_rate: Optional[float] = None,
) -> tuple[TeacherCache, dict[str, Any]]:
    """The teacher cache of a training set, set up the one way both methods use it (Ark-ASR's TD, ASKD-Whisper's
    cached KD and pseudo-labels): checked against the teacher (``None``: not loaded, as for TD), the manifests and
    ``tau`` before any step; ``dm.train_cuts`` restricted to the cached utterances (``policy``: skip and count, or
    refuse); with ``relabel``, each transcript replaced by the teacher's (``max_error_rate``: Distil-Whisper's WER
    filter). Returns the cache and the counts for the fit summary (``not_in_cache``, ``teacher_labels``)."""
    cache = TeacherCache(path)
    cache.check_for(teacher, manifests, tau=tau)
    info: dict[str, Any] = {}
    dm.train_cuts, info["not_in_cache"] = cache.coverage(dm.train_cuts, policy)
    if relabel:
        dm.train_cuts, info["teacher_labels"] = relabel_with_teacher(dm.train_cuts, cache, max_error_rate)
    return cache, info


def relabel_with_teacher(cuts, cache: TeacherCache, max_error_rate: Optional[float]):
    """Replace each cut's transcript by the teacher's (pseudo-labels); drop cuts without one or above the
    error-rate filter. Returns ``(cuts, {"kept", "dropped"})``."""
    labels = cache.pseudo_labels(max_error_rate)

    def relabel(c):
        c.supervisions[0].text = labels[c.id]
        return c

    before = len(cuts)
    out = cuts.filter(lambda c: c.id in labels and labels[c.id].strip()).map(relabel).to_eager()
    if len(out) == 0:
        raise ValueError(f"no training utterance passes the pseudo-label filter (max error rate {max_error_rate})")
    return out, {"kept": len(out), "dropped": before - len(out)}
