"""The process's shared store of frozen-encoder states (common.teachers.encoder_cache): found by the encoder's weights,
keyed by the input's bytes, reused across models that share the encoder (the demo's teacher and its students)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from common.teachers.encoder_cache import (
    _SHARED,
    MAX_SHARED_ENCODERS,
    content_keys,
    shared_cache,
    weights_fingerprint,
)


@pytest.mark.unit
def test_content_keys_tell_inputs_apart_by_bytes_dtype_and_shape():
    x = torch.randn(3, 4, 5)
    x[1] = x[0]
    k = content_keys(x)
    assert k[0] == k[1] != k[2]
    y = x.clone()
    y[0, 2, 3] += 1e-6  # one element
    assert content_keys(y)[0] != k[0] and content_keys(y)[1] == k[1]
    assert content_keys(x.double())[0] != k[0]
    assert content_keys(x.reshape(3, 5, 4))[0] != k[0]


@pytest.mark.unit
def test_one_store_per_encoder_weights_and_a_changed_encoder_gets_another():
    enc = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    twin = copy.deepcopy(enc)
    store = shared_cache(enc, 1.0)
    assert shared_cache(twin, 3.0) is store and store.limit == 3.0 * 2**20  # the largest budget asked for
    fp = weights_fingerprint(twin)
    with torch.no_grad():
        twin[0].weight[0, 0] += 1.0  # an in-place change (an optimiser step) is seen through the version counter
    assert weights_fingerprint(twin) != fp and shared_cache(twin, 1.0) is not store
    twin.load_state_dict(enc.state_dict())  # the same weights again: the same store
    assert shared_cache(twin, 1.0) is store


@pytest.mark.unit
def test_states_computed_under_bf16_autocast_are_another_store_than_float32_ones():
    """trainer.precision bf16-mixed: a model decoding in float32 never reads states computed under autocast (they
    differ by bf16 rounding), and one under autocast reads those of another under autocast."""
    enc = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    plain = shared_cache(enc, 1.0)
    plain.states(["a", "b"], lambda rows: enc(x[rows]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = shared_cache(enc, 1.0)
        out, hits = mixed.states(["a", "b"], lambda rows: enc(x[rows]))
        assert mixed is not plain and hits == 0 and out.dtype == torch.bfloat16
        assert shared_cache(copy.deepcopy(enc), 1.0) is mixed
        assert mixed.states(["a"], lambda rows: pytest.fail("recomputed"))[1] == 1
    assert (
        shared_cache(enc, 1.0) is plain
        and plain.states(["a", "b"], lambda rows: pytest.fail("recomputed"))[0].dtype == torch.float32
    )


@pytest.mark.unit
def test_at_most_a_few_encoders_are_kept_least_recently_used_dropped():
    encs = [torch.nn.Linear(2, 2) for _ in range(MAX_SHARED_ENCODERS + 1)]
    first = shared_cache(encs[0], 1.0)
    for e in encs[1:]:
        shared_cache(e, 1.0)
    assert len(_SHARED) == MAX_SHARED_ENCODERS and f"{weights_fingerprint(encs[0])}:float32" not in _SHARED
    assert f"{weights_fingerprint(encs[1])}:float32" in _SHARED
    assert shared_cache(encs[0], 1.0) is not first


def test_decoding_reads_the_states_another_model_with_the_same_encoder_computed(whisper_tiny, tiny_corpus):
    """decoding.encoder_cache_mb: the teacher's decode fills the store; a student with the teacher's (frozen) encoder
    and fewer decoder layers then decodes the same clips with no encoder pass, and each model's transcripts equal its
    own uncached ones."""
    from common.audio import load_audio
    from common.evaluate import DecodeConfig, WhisperTranscriber

    model, proc = whisper_tiny
    rows = [json.loads(line) for line in (tiny_corpus / "en_test" / "manifest.jsonl").read_text().splitlines()][:3]
    audios = [load_audio(tiny_corpus / "en_test" / r["audio_filepath"]) for r in rows]
    student = copy.deepcopy(model)
    student.model.decoder.layers = student.model.decoder.layers[:2]
    calls = []
    student.get_encoder().register_forward_hook(lambda *a: calls.append(1))

    def decode(m, mb):
        tr = WhisperTranscriber(m, proc)
        return tr.transcribe(
            tr.collate(audios, [r["text"] for r in rows], ["en"] * 3),
            DecodeConfig(max_new_tokens=40, encoder_cache_mb=mb),
        )

    plain = {"teacher": decode(model, 0), "student": decode(student, 0)}
    assert len(calls) == 1 and plain["teacher"] != plain["student"]  # the pruned decoder writes something else
    assert decode(model, 100) == plain["teacher"]
    (store,) = _SHARED.values()
    assert len(store) == 3
    assert decode(student, 100) == plain["student"] and len(calls) == 1 and len(store) == 3  # no second encoder pass
    with pytest.raises(ValueError, match="encoder_cache_mb must be >= 0"):
        DecodeConfig(encoder_cache_mb=-1)


@pytest.mark.unit
def test_log_mel_features_kept_per_clip_equal_the_computed_ones_in_any_batch(whisper_tiny):
    """whisper_log_mel with a budget: each clip's 30 s features are computed once and kept; a later batch that mixes
    kept and new clips, in another order, equals the features computed for that batch (bytes, not a tolerance)."""
    import numpy as np

    from common.data.collate import WhisperCollator, whisper_log_mel
    from common.teachers.encoder_cache import _FEATURES

    fe = whisper_tiny[1].feature_extractor
    rng = np.random.default_rng(0)
    a = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 41000, 8000, 23000)]
    first = whisper_log_mel(fe, a[:3], cache_mb=100)
    assert torch.equal(first, whisper_log_mel(fe, a[:3])) and first.shape == (3, fe.feature_size, 3000)
    (store,) = _FEATURES.values()
    assert len(store) == 3
    mixed = [a[2], a[3], a[0]]
    assert torch.equal(whisper_log_mel(fe, mixed, cache_mb=100), whisper_log_mel(fe, mixed)) and len(store) == 4
    assert not torch.equal(first[0], first[1])  # the clips differ, so a wrong row would be seen
    # a collator and its feature-keeping copy give the same batch; the original keeps nothing
    col = WhisperCollator(whisper_tiny[1], with_labels=False)
    kept = col.with_feature_cache(100)
    assert col.feature_cache_mb == 0 and kept.feature_cache_mb == 100
    assert torch.equal(kept(a[:2], ["", ""], ["en"] * 2)["input_features"], first[:2])


@pytest.mark.unit
def test_no_features_kept_without_a_budget_for_a_dithering_front_end_or_past_the_budget(whisper_tiny):
    import copy as _copy

    import numpy as np

    from common.data.collate import whisper_log_mel
    from common.teachers.encoder_cache import _FEATURES

    fe = whisper_tiny[1].feature_extractor
    a = [np.full(16000, 0.01, np.float32), np.linspace(-0.1, 0.1, 16000, dtype=np.float32)]
    whisper_log_mel(fe, a)
    assert not _FEATURES  # no budget: no store
    dithering = _copy.deepcopy(fe)
    dithering.dither = 1.0  # random noise added per call: a kept copy would not be what a new call gives
    whisper_log_mel(dithering, a, cache_mb=100)
    assert not _FEATURES
    other = _copy.deepcopy(fe)
    other.feature_size, other.mel_filters = 40, fe.mel_filters[:, :40]  # another front end: another store
    whisper_log_mel(fe, a, cache_mb=1.5)  # one clip's 80 x 3000 float32 features (0.92 MB) fit, the second not
    whisper_log_mel(other, a[:1], cache_mb=100)
    small, big = _FEATURES.values()
    assert len(small) == 1 and len(big) == 1 and small is not big


@pytest.mark.unit
def test_the_whisper_teacher_keeps_its_features_only_when_asked(teacher):
    import numpy as np

    from common.teachers.encoder_cache import _FEATURES

    a = [np.linspace(-0.2, 0.2, 24000, dtype=np.float32)]
    plain = teacher.prepare(a, ["en"])["input_features"]
    assert not _FEATURES
    assert torch.equal(teacher.prepare(a, ["en"], feature_cache_mb=10)["input_features"], plain)
    assert [len(s) for s in _FEATURES.values()] == [1]
