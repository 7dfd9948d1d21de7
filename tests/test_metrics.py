import math
import os

import pytest
import torch

from common.metrics import ErrorRate, score_units, score_utterance


@pytest.mark.unit
def test_english_words_hand_computed():
    s = score_utterance("the cat sat on the mat", "the cat sat on mat", "en")
    assert (s.sub, s.dele, s.ins, s.ref_units) == (0, 1, 0, 6)
    s = score_utterance("the cat sat", "a cat sat down", "en")
    assert (s.sub, s.dele, s.ins, s.ref_units, s.hyp_units) == (1, 0, 1, 3, 4)
    assert score_utterance("the cat sat on the mat", "the cat sat on mat today", "en").errors == 2
    m = ErrorRate()
    m.update(["the cat sat on mat today", "hello world"], ["the cat sat on the mat", "Hello, world!"], "en")
    r = m.compute()
    assert r["ref_units"] == 8 and r["error_rate"].item() == pytest.approx(2 / 8)
    # raw view keeps case and punctuation: "Hello," vs "hello" and "world!" vs "world" are substitutions
    assert r["raw_error_rate"].item() == pytest.approx(4 / 8)


@pytest.mark.unit
def test_mandarin_characters():
    s = score_utterance("今天天气很好。", "今天天汽很好啊", "zh")
    assert (s.sub, s.dele, s.ins, s.ref_units) == (1, 0, 1, 6)


@pytest.mark.unit
def test_empty_reference_counted_not_dropped():
    m = ErrorRate()
    m.update(["something here", ""], ["", ""], ["en", "en"])
    r = m.compute()
    assert r["n_empty_refs"] == 2 and r["n_utts"] == 2
    assert r["ins"] == 2 and r["ref_units"] == 0
    assert math.isnan(r["error_rate"].item())
    m.update(["a b"], ["a b c d"], ["en"])
    r = m.compute()
    assert r["error_rate"].item() == pytest.approx((2 + 2) / 4)


@pytest.mark.unit
def test_mixed_language_batch_uses_units_per_utterance():
    m = ErrorRate()
    m.update(["hello there", "你好世界"], ["hello world", "你好中国"], ["en", "zh"])
    r = m.compute()
    assert r["ref_units"] == 2 + 4
    assert r["sub"] == 1 + 2
    assert r["error_rate"].item() == pytest.approx(3 / 6)


@pytest.mark.unit
def test_alignment_ops():
    s = score_units(list("abc"), list("axcd"))
    assert [op for op, _, _ in s.alignment] == ["C", "S", "C", "I"]


@pytest.mark.unit
def test_corpus_level_not_mean_of_rates():
    m = ErrorRate()
    m.update(["a", "a b c d e f g h i j"], ["b", "a b c d e f g h i j"], "en")
    assert m.compute()["error_rate"].item() == pytest.approx(1 / 11)


HYPS = ["the cat sat", "a dog", "你好世界", "", "one two three four"] * 3
REFS = ["the cat sat down", "a big dog", "你好中国", "nothing here", ""] * 3
LANGS = ["en", "en", "zh", "en", "en"] * 3


def _ddp_worker(rank: int, world: int, port: int, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    m = ErrorRate()
    idx = list(range(rank, len(HYPS), world))
    m.update([HYPS[i] for i in idx], [REFS[i] for i in idx], [LANGS[i] for i in idx])
    r = m.compute()
    q.put((rank, {k: v.item() for k, v in r.items()}))
    torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_ddp_sum_equals_single_process():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, port, q), nprocs=2, join=True, start_method="spawn")
    results = dict(q.get() for _ in range(2))
    single = ErrorRate()
    single.update(HYPS, REFS, LANGS)
    expected = {k: v.item() for k, v in single.compute().items()}
    for rank in (0, 1):
        assert results[rank] == pytest.approx(expected, nan_ok=True)


@pytest.mark.unit
def test_add_invalidates_the_cached_result():
    from common.metrics import ErrorRate, score_utterance

    m = ErrorRate()
    m.add(score_utterance("a b", "a b", "en"), score_utterance("a b", "a b", "en", normalised=False))
    assert m.compute()["error_rate"].item() == 0.0
    m.add(score_utterance("a b", "a c", "en"), score_utterance("a b", "a c", "en", normalised=False))
    assert m.compute()["error_rate"].item() == 0.25


@pytest.mark.unit
def test_a_punctuation_only_reference_is_an_empty_reference():
    """'...' normalises to no word (the Whisper normaliser kept a lone '.', scored as a one-word reference)."""
    m = ErrorRate()
    m.update(["hello"], ["..."], "en")
    r = m.compute()
    assert int(r["n_empty_refs"]) == 1 and int(r["ref_units"]) == 0 and int(r["ins"]) == 1
