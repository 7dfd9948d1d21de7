"""Qwen3ASRTeacher on a tiny random Qwen3ASRConfig with the real Qwen3 tokenizer (+ Qwen3-ASR specials)."""

import numpy as np
import pytest
import torch

from common.teachers.qwen3_asr import QWEN3_ASR_SPECIALS, Qwen3ASRTeacher, build_qwen3_asr_tokenizer


@pytest.fixture(scope="module")
def teacher():
    from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    cfg = Qwen3ASRConfig(
        audio_config=dict(
            num_mel_bins=128,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=32,
            d_model=16,
            output_dim=32,
            downsample_hidden_size=8,
            n_window=50,
            n_window_infer=800,
        ),
        text_config=dict(
            model_type="qwen3",
            vocab_size=151936,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            head_dim=16,
            tie_word_embeddings=True,
        ),
    )
    torch.manual_seed(0)
    return Qwen3ASRTeacher(Qwen3ASRForConditionalGeneration(cfg), build_qwen3_asr_tokenizer())


def test_special_token_ids_match_transformers():
    from transformers import Qwen3ASRConfig

    tok = build_qwen3_asr_tokenizer()
    assert tok.convert_tokens_to_ids("<|audio_pad|>") == Qwen3ASRConfig().audio_token_id == 151676
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645 and 151645 in Qwen3ASRConfig().eos_token_id
    for t, i in QWEN3_ASR_SPECIALS.items():
        assert tok.convert_tokens_to_ids(t) == i
        assert tok.encode(t, add_special_tokens=False) == [i]  # one piece, never split


def test_prompt_is_the_chat_template(teacher):
    ids = teacher.prompt_ids(3, "en")
    assert teacher.tokenizer.decode(ids) == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_pad|><|audio_pad|>"
        "<|audio_end|><|im_end|>\n<|im_start|>assistant\nlanguage English<asr_text>"
    )
    assert teacher.tokenizer.decode(teacher.prompt_ids(1, "zh")).endswith("language Chinese<asr_text>")


def test_score_parity_with_plain_forward(teacher):
    rng = np.random.default_rng(0)
    audios = [rng.standard_normal(16000 * s).astype(np.float32) * 0.1 for s in (1, 3, 2)]
    batch = teacher.prepare(audios)
    assert batch["n_audio_tokens"] == [13, 39, 26]  # ~13 audio tokens per second
    texts = ["hello world", "你好世界，今天天气很好", "a much longer english sentence to make the padding matter"]
    targets = [teacher.encode_text(t) for t in texts]
    k = 6
    sc = teacher.score(batch, targets, top_k=k)
    langs = ["en", "zh", "en"]  # inferred from the text's script
    rows = [teacher.prompt_ids(n, l) + t[:-1] for n, l, t in zip(batch["n_audio_tokens"], langs, targets)]
    L = max(map(len, rows))
    ids = torch.full((3, L), teacher.pad_id)
    att = torch.zeros((3, L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], att[i, : len(r)] = torch.tensor(r), 1
    with torch.no_grad():
        logits = teacher.model(
            input_ids=ids,
            attention_mask=att,
            input_features=batch["input_features"],
            input_features_mask=batch["input_features_mask"],
        ).logits
    lp_all = torch.log_softmax(logits.float(), -1)
    for i, t in enumerate(targets):
        n, start = len(t), len(rows[i]) - len(t)
        lp = lp_all[i, start : start + n]
        assert sc.mask[i].sum() == n
        torch.testing.assert_close(
            sc.target_logprobs[i, :n], lp.gather(-1, torch.tensor(t)[:, None]).squeeze(-1), atol=1e-5, rtol=0
        )
        v, idx = lp.topk(k, -1)
        assert torch.equal(sc.topk_ids[i, :n], idx)
        torch.testing.assert_close(sc.topk_logprobs[i, :n], v, atol=1e-5, rtol=0)
        cand = torch.tensor([0, 151645, 100]).expand(3, sc.mask.shape[1], 3).contiguous()
        torch.testing.assert_close(sc.gather(cand)[i, :n], lp.gather(-1, cand[i, :n]), atol=5e-5, rtol=0)


def test_generate_parses_and_stops(teacher):
    rng = np.random.default_rng(1)
    batch = teacher.prepare([rng.standard_normal(16000).astype(np.float32) * 0.1] * 2, ["en", "zh"])
    g = teacher.generate(batch, max_new_tokens=4)
    assert len(g.texts) == 2 and all(len(ids) <= 4 for ids in g.token_ids)
    assert all(teacher.stop_id not in ids for ids in g.token_ids)


def test_the_qwen3_asr_teacher_fulfils_the_contract(teacher):
    """The protocol's members, with the encoder reuse refused in one line (its audio joins the LM prompt)."""
    from common.teachers import Teacher

    assert isinstance(teacher, Teacher) and not teacher.reusable_encoder
    assert isinstance(teacher.device, torch.device) and isinstance(teacher.stop_id, int)
    with pytest.raises(NotImplementedError, match="reusable_encoder"):
        teacher.encode({})
    with pytest.raises(ValueError, match="cannot reuse encoder states"):
        teacher.score({}, [[1]], top_k=2, encoder_out=torch.zeros(1))
