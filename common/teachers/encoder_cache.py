"""Frozen encoders' states kept per utterance across epochs: one mechanism for both methods.

A frozen encoder's output depends on the audio alone, so the states of a training utterance computed in one epoch are
those of the next: Ark-ASR's OPD keeps its Whisper teacher's (``opd.teacher_encoder_cache_mb``), ASKD-Whisper the
shared frozen encoder's (``encoder_cache_mb``), evaluation a Whisper model's (``decoding.encoder_cache_mb``). A Whisper
encoder pads every clip to 30 s, so on a small corpus its pass is most of a training step and of a decoding batch
(``bench/kd_step.py``, ``bench/opd_step.py`` and ``bench/encoder_cache.py`` measure the saving).

:func:`shared_cache` is the one store per encoder in a process: it is found by a fingerprint of the encoder's weights,
and its keys are the bytes of the input features (:func:`content_keys`), so every model of the process with the same
frozen encoder - a teacher, its students, each stage of ``make demo``, each seed - reads what another has computed, and
an encoder whose weights differ (a trained one, another checkpoint) can never read them.

The log-mel features that key those states are kept the same way (:func:`shared_feature_cache`, keyed by the
waveform's bytes, one store per feature-extractor configuration): a front end that pads every clip to a fixed window
(Whisper's 30 s) gives a clip the same features in any batch, so a clip seen before costs neither its features
(~17-36 ms of a 30 s log-mel on this project's 2-core CPU) nor its encoder pass. Each place that keeps encoder states
keeps the features under the same budget, in a store of their own (``common.data.collate.whisper_log_mel``).
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch


class EncoderStateCache:
    """Encoder states by utterance id, up to ``limit_mb`` of memory (the first utterances that fit are kept; the
    others are recomputed each time, so the result never changes, only the cost)."""

    def __init__(self, limit_mb: float) -> None:
        self.limit = limit_mb * 2**20
        self.bytes = 0
        self._store: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def states(self, ids: Sequence[str], compute: Callable[[list[int]], torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(B, frames, d) states of the utterances ``ids``: cached ones from memory, the others from
        ``compute(positions)`` (the batch positions to encode, in order) and kept while the budget allows. Returns the
        states and the number of cache hits."""
        missing = [i for i, u in enumerate(ids) if u not in self._store]
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            enc = compute(missing)
            for j, i in enumerate(missing):
                fresh[ids[i]] = enc[j]
                n = enc[j].numel() * enc[j].element_size()
                if self.bytes + n <= self.limit:
                    self._store[ids[i]] = enc[j].clone()
                    self.bytes += n
        return torch.stack([fresh[u] if u in fresh else self._store[u] for u in ids]), len(ids) - len(missing)


MAX_SHARED_ENCODERS = 4
"""At most this many encoders' stores are kept by :func:`shared_cache` (the least recently used is dropped)."""

_SHARED: OrderedDict[str, EncoderStateCache] = OrderedDict()
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def content_keys(feats: torch.Tensor) -> list[str]:
    """One key per row of ``feats`` (B, ...): a hash of its dtype, shape and bytes. Equal keys: equal encoder inputs."""
    rows = feats.detach().cpu().contiguous()
    head = f"{rows.dtype}{tuple(rows.shape[1:])}".encode()
    return [hashlib.blake2b(head + r.view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest() for r in rows]


def waveform_keys(audios: Sequence[np.ndarray]) -> list[str]:
    """One key per waveform: a hash of its dtype, shape and bytes (equal keys: equal samples)."""
    keys = []
    for a in audios:
        a = np.ascontiguousarray(a)
        keys.append(hashlib.blake2b(f"{a.dtype}{a.shape}".encode() + a.tobytes(), digest_size=16).hexdigest())
    return keys


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of ``module``'s parameters and buffers (names, dtypes, shapes, bytes) and device. Memoised per module
    until a tensor of it changes in place (an optimiser step, ``load_state_dict``: torch's version counters)."""
    tensors = list(module.state_dict(keep_vars=True).items())
    versions = tuple(t._version for _, t in tensors)
    memo = _FINGERPRINTS.get(module)
    if memo is not None and memo[0] == versions:
        return memo[1]
    h = hashlib.blake2b(digest_size=16)
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:{t.device}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    _FINGERPRINTS[module] = (versions, digest)
    return digest


def autocast_state(module: torch.nn.Module) -> str:
    """The autocast dtype in force for ``module``'s device type (``float32`` when autocast is off)."""
    p = next(module.parameters(), None)
    dev = p.device.type if p is not None else "cpu"
    return str(torch.get_autocast_dtype(dev)) if torch.is_autocast_enabled(dev) else "float32"


def shared_cache(encoder: torch.nn.Module, limit_mb: float) -> EncoderStateCache:
    """The process's store of ``encoder``'s states (found by :func:`weights_fingerprint`; keys: :func:`content_keys`).
    Its budget is the largest ``limit_mb`` asked for it; at most :data:`MAX_SHARED_ENCODERS` stores are kept. States
    computed under autocast (``trainer.precision: bf16-mixed``) are another store than float32 ones: a model reads
    only states of the precision it runs in."""
    return _lru_store(
        _SHARED, weights_fingerprint(encoder) + ":" + autocast_state(encoder), limit_mb, MAX_SHARED_ENCODERS
    )


def _lru_store(stores: OrderedDict, key: str, limit_mb: float, max_stores: int) -> EncoderStateCache:
    """``stores[key]`` (made if missing, its budget raised to ``limit_mb`` if larger), now the most recently used; the
    least recently used stores beyond ``max_stores`` are dropped."""
    cache = stores.pop(key, None)
    if cache is None:  # (an empty store is falsy: it has a length)
        cache = EncoderStateCache(limit_mb)
    cache.limit = max(cache.limit, limit_mb * 2**20)
    stores[key] = cache
    while len(stores) > max_stores:
        stores.popitem(last=False)
    return cache


def _front_end_fingerprint(feature_extractor) -> str:
    """What a feature extractor's output depends on: its class, its scalar settings and its mel filters' bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(feature_extractor).__name__.encode())
    for k, v in sorted(vars(feature_extractor).items()):
        if isinstance(v, np.ndarray):
            h.update(f"{k}:{v.dtype}:{v.shape}".encode() + np.ascontiguousarray(v).tobytes())
        elif isinstance(v, (str, int, float, bool, type(None))):
            h.update(f"{k}={v!r};".encode())
    return h.hexdigest()


MAX_SHARED_FRONT_ENDS = 2
"""At most this many feature extractors' stores are kept by :func:`shared_feature_cache` (least recently used
dropped)."""

_FEATURES: OrderedDict[str, EncoderStateCache] = OrderedDict()


def shared_feature_cache(feature_extractor, limit_mb: float) -> EncoderStateCache:
    """The process's store of ``feature_extractor``'s outputs per waveform (keys: :func:`waveform_keys`), found by its
    configuration (:func:`_front_end_fingerprint`); its budget is the largest ``limit_mb`` asked for it. Only for a
    deterministic front end that pads to a fixed window (checked by ``common.data.collate.whisper_log_mel``)."""
    return _lru_store(_FEATURES, _front_end_fingerprint(feature_extractor), limit_mb, MAX_SHARED_FRONT_ENDS)


def clear_shared() -> None:
    """Drop every shared store, features included (tests; a long-lived process that is done with its encoders)."""
    _SHARED.clear()
    _FEATURES.clear()
