import json

import pytest
import torch

from common.audio import load_audio
from common.teachers.cache import CacheConfig, CacheMismatchError, TeacherCache, build_cache
from common.teachers.whisper_teacher import WhisperTeacher


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def teacher(whisper_tiny):
    return WhisperTeacher(*whisper_tiny)


def test_cache_resume_readback_and_refusal(tiny_corpus, tmp_path, teacher):
    cfg = CacheConfig(
        manifest=str(tiny_corpus / "en_train" / "manifest.jsonl"),
        out_dir=str(tmp_path / "cache"),
        top_k=4,
        shard_size=16,
        batch_size=8,
        max_new_tokens=40,
    )

    def kill_after_first(i):
        if i == 0:
            raise Killed

    with pytest.raises(Killed):  # a run killed after its first shard
        build_cache(cfg, teacher=teacher, on_shard=kill_after_first, progress=False)
    first = tmp_path / "cache" / "shard-00000.safetensors"
    mtime = first.stat().st_mtime_ns
    with pytest.raises(Exception, match="incomplete"):
        TeacherCache(cfg.out_dir)
    computed = []
    index = build_cache(cfg, teacher=teacher, on_shard=computed.append, progress=False)
    assert computed == [1, 2]  # shard 0 was not recomputed
    assert first.stat().st_mtime_ns == mtime
    assert index["complete"] and index["summary"]["n_utts"] == 48
    assert 0 <= index["summary"]["teacher_error_rate"]

    cache = TeacherCache(cfg.out_dir, expected_stamp=index["stamp"])
    assert len(cache) == 48
    # values read back equal a recomputation of the same teacher batch (the shard's first 8 utterances)
    rows = [json.loads(l) for l in (tiny_corpus / "en_train" / "manifest.jsonl").read_text().splitlines()][:8]
    ids = [f"{r['id']}" for r in rows]
    audios = [load_audio(tiny_corpus / "en_train" / r["audio_filepath"]) for r in rows]
    batch = teacher.prepare(audios, ["en"] * 8)
    targets = [teacher.encode_text(r["text"]) for r in rows]
    sc = teacher.score(batch, targets, top_k=4)
    for i, uid in enumerate(ids):
        u = cache[uid]
        n = len(targets[i])
        assert u.target_ids.tolist() == targets[i]
        assert torch.equal(u.topk_ids, sc.topk_ids[i, :n])
        torch.testing.assert_close(u.topk_logprobs, sc.topk_logprobs[i, :n], atol=1e-6, rtol=0)
        torch.testing.assert_close(u.target_logprobs, sc.target_logprobs[i, :n], atol=1e-6, rtol=0)
        assert u.hyp is not None and u.errors is not None
    assert len(cache.pseudo_labels()) == 48 and len(cache.pseudo_labels(0.1)) <= 48

    # a changed top-k, or a changed teacher, is refused naming the difference
    with pytest.raises(CacheMismatchError, match="top_k"):
        build_cache(CacheConfig(**{**cfg.__dict__, "top_k": 8}), teacher=teacher, progress=False)
    import copy

    other = WhisperTeacher(copy.deepcopy(teacher.model), teacher.processor)  # never touch the shared model
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    with pytest.raises(CacheMismatchError, match="teacher_weights"):
        build_cache(cfg, teacher=other, progress=False)
