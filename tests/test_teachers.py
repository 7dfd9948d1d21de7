"""Teacher layer: parity with the plain HF forward, self-consistency of the real tiny.en, token maps."""

import json

import numpy as np
import pytest
import torch

from common.audio import load_audio
from common.teachers.scoring import gather_logprobs
from common.teachers.token_map import TokenMap


def test_teacher_is_frozen(teacher):
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_score_parity_with_plain_forward_padded_batch(teacher, real_speech):
    rows = [json.loads(l) for l in (real_speech / "manifest.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["language"] == "en"][:3]
    audios = [load_audio(real_speech / r["audio_filepath"]) for r in rows]
    texts = ["Hello there.", r"A much longer sentence, with several words to make padding matter here.", "ok"]
    batch = teacher.prepare(audios, ["en"] * 3)
    targets = [teacher.encode_text(t) for t in texts]
    k = 8
    sc = teacher.score(batch, targets, top_k=k)
    prefix = teacher._prefix("en")
    # the plain HF forward on the same right-padded batch
    L = max(len(prefix) + len(t) - 1 for t in targets)
    dec = torch.full((3, L), teacher.eot)
    att = torch.zeros((3, L), dtype=torch.long)
    for i, t in enumerate(targets):
        dec[i, : len(prefix) + len(t) - 1] = torch.tensor(prefix + t[:-1])
        att[i, : len(prefix) + len(t) - 1] = 1
    with torch.no_grad():
        logits = teacher.model(
            input_features=batch["input_features"], decoder_input_ids=dec, decoder_attention_mask=att
        ).logits
    lp_all = torch.log_softmax(logits.float(), -1)
    for i, tgt in enumerate(targets):
        n = len(tgt)
        lp = lp_all[i, len(prefix) - 1 : len(prefix) - 1 + n]  # (n, V): position predicting target j
        assert sc.mask[i].sum() == n
        torch.testing.assert_close(
            sc.target_logprobs[i, :n], lp.gather(-1, torch.tensor(tgt)[:, None]).squeeze(-1), atol=1e-5, rtol=0
        )
        ref_v, ref_i = lp.topk(k, -1)
        assert torch.equal(sc.topk_ids[i, :n], ref_i)
        torch.testing.assert_close(sc.topk_logprobs[i, :n], ref_v, atol=1e-5, rtol=0)
        some = torch.tensor([[5, 100, 50256]] * n)
        got = gather_logprobs(sc.hidden[i : i + 1, :n], teacher.model.proj_out, sc.lse[i : i + 1, :n], some[None])[0]
        # gather re-projects only the asked ids (another summation order than the full matmul): float noise only
        torch.testing.assert_close(got, lp.gather(-1, some), atol=5e-5, rtol=0)
        # and the row alone, unpadded: padding does not change the scores beyond float noise
        with torch.no_grad():
            alone = teacher.model(
                input_features=batch["input_features"][i : i + 1], decoder_input_ids=torch.tensor([prefix + tgt[:-1]])
            ).logits[0]
        torch.testing.assert_close(
            torch.log_softmax(alone.float(), -1)[len(prefix) - 1 :].gather(-1, torch.tensor(tgt)[:, None]).squeeze(-1),
            sc.target_logprobs[i, :n],
            atol=1e-4,
            rtol=0,
        )
    assert not sc.mask[2, len(targets[2]) :].any()


def test_rescoring_own_greedy_transcripts(teacher, real_speech):
    """Real tiny.en on the 40 English clips: teacher-forced argmax == generated token at >= 99 % of positions."""
    rows = [json.loads(l) for l in (real_speech / "manifest.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["language"] == "en"]
    assert len(rows) == 40
    agree = total = 0
    for s in range(0, 40, 10):
        audios = [load_audio(real_speech / r["audio_filepath"]) for r in rows[s : s + 10]]
        batch = teacher.prepare(audios, ["en"] * len(audios))
        gen = teacher.generate(batch, max_new_tokens=128)
        targets = [ids + [teacher.eot] for ids in gen.token_ids]
        sc = teacher.score(batch, targets, top_k=1)
        tgt = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in targets], batch_first=True, padding_value=-1)
        hit = (sc.topk_ids[..., 0] == tgt) & sc.mask
        agree += int(hit.sum())
        total += int(sc.mask.sum())
    assert total > 500
    assert agree / total >= 0.99, f"{agree}/{total}"


def _qwen3_tokenizer():
    from common.teachers.qwen3 import load_qwen3_tokenizer

    return load_qwen3_tokenizer()


def test_token_map_qwen_identity():
    q = _qwen3_tokenizer()
    tm = TokenMap(q, q)
    assert tm.is_identity and tm.teacher_coverage == 1.0
    ids = q.encode("hello world, 你好", add_special_tokens=False)
    assert tm.retokenize(ids) == ids and tm.stats.mismatch_rate == 0.0


def test_token_map_whisper_vs_qwen(whisper_tiny):
    """Both are byte-level BPE vocabularies: most of Whisper's 50k tokens exist verbatim in Qwen3's."""
    _, proc = whisper_tiny
    w, q = proc.tokenizer, _qwen3_tokenizer()
    tm = TokenMap(w, q)
    for tok in ("Ġthe", "Ġworld", "ing", "."):
        wid, qid = w.convert_tokens_to_ids(tok), q.convert_tokens_to_ids(tok)
        assert tm.to_student(torch.tensor([wid])).item() == qid
    assert tm.to_student(torch.tensor([w.convert_tokens_to_ids("<|notimestamps|>")])).item() == -1
    assert 0.5 < tm.teacher_coverage < 1.0
    print(f"Whisper tiny.en -> Qwen3: {tm.n_shared}/{tm.n_teacher} = {tm.teacher_coverage:.4f} mapped")
    q_ids = q.encode(" the cat sat on the mat", add_special_tokens=False)
    w_ids = tm.retokenize(q_ids)
    assert w.decode(w_ids) == " the cat sat on the mat"


def test_build_teacher_from_config_bf16():
    from common.teachers import TeacherConfig, build_teacher

    t = build_teacher(TeacherConfig(kind="whisper", name_or_path="bundled:tiny.en", dtype="bfloat16"))
    assert next(t.model.parameters()).dtype == torch.bfloat16 and not t.model.training
    batch = t.prepare([np.zeros(16000, np.float32)], ["en"])
    sc = t.score(batch, [t.encode_text("hello")], top_k=3)
    assert torch.isfinite(sc.topk_logprobs).all() and sc.topk_logprobs.dtype == torch.float32


def test_teacher_config_rejects_bundled_qwen():
    from common.config import ConfigError, from_dict
    from common.teachers import TeacherConfig

    with pytest.raises(ConfigError, match="bundled models are Whisper"):
        from_dict(TeacherConfig, {"kind": "qwen3_asr", "name_or_path": "bundled:tiny.en"})


def test_the_whisper_teacher_fulfils_the_contract(teacher):
    """Everything the methods call is on the protocol (a runtime-checkable Protocol); online KD's full logits come
    from the teacher (``decoder_logits``), equal to the Hugging Face forward."""
    from common.teachers import Teacher

    assert isinstance(teacher, Teacher) and teacher.reusable_encoder
    assert isinstance(teacher.device, torch.device) and isinstance(teacher.stop_id, int)
    feats = teacher.prepare([np.zeros(16000, np.float32)], ["en"])
    enc = teacher.encode(feats)
    ids = torch.tensor([teacher._prefix("en") + teacher.encode_text("hello", "en")[:-1]])
    logits = teacher.decoder_logits(enc, {"decoder_input_ids": ids, "decoder_attention_mask": torch.ones_like(ids)})
    full = teacher.model(input_features=feats["input_features"], decoder_input_ids=ids).logits
    torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)
