"""Ark-ASR student and its SFT / TD / OPD stages on a tiny random LM with the real tiny.en encoder."""

import numpy as np
import pytest
import torch

from ark_asr.config import ArkConfig, ArkModelConfig
from ark_asr.model import ARK_SPECIALS, ArkStudent, build_student
from common.config import from_dict

TINY_LLM = dict(
    hidden_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=128,
    head_dim=32,
    tie_word_embeddings=True,
    max_position_embeddings=1024,
)


def _model_cfg(**kw):
    return ArkModelConfig(
        encoder="bundled:tiny.en",
        llm="config",
        llm_config=TINY_LLM,
        tokenizer="whisper",
        transcript_prefix=" ",
        freeze_encoder=True,
        **kw,
    )


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_student(_model_cfg())


def test_paper_scale_student_on_meta():
    cfg = ArkModelConfig(encoder="preset:whisper-large-v3", llm="preset:qwen3-0.6b", tokenizer="qwen3")
    s = build_student(cfg, device="meta")
    n_llm = sum(p.numel() for p in s.llm.parameters())
    n_enc = sum(p.numel() for p in s.encoder.parameters())
    n_ad = sum(p.numel() for p in s.adapter.parameters()) + sum(p.numel() for p in s.norm.parameters())
    print(f"paper-scale Ark student: LLM {n_llm / 1e6:.1f}M, encoder {n_enc / 1e6:.1f}M, adapter {n_ad / 1e6:.1f}M")
    assert 0.55e9 < n_llm < 0.65e9 and 0.6e9 < n_enc < 0.7e9
    assert s.adapter[0].in_features == 4 * 1280 and s.adapter[0].out_features == 2 * 1024


def test_prompt_and_audio_tokens(student):
    tok = student.tokenizer
    assert all(len(tok.encode(t, add_special_tokens=False)) == 1 for t in ARK_SPECIALS)
    ids = student.prompt_ids(3)
    assert (
        tok.decode(ids) == "<|user|><|begin_of_audio|><|audio|><|audio|><|audio|><|end_of_audio|>"
        "Please transcribe this audio.<|assistant|>"
    )
    f = student.features([np.zeros(16000 * 2, np.float32), np.zeros(16000 * 3, np.float32)])
    assert student.n_audio_tokens(f["feature_lens"]) == [25, 37]  # 12.5 audio tokens per second
    assert f["input_features"].shape[-1] % 8 == 0


def test_generate_blocks_control_tokens_and_records_topk(student):
    f = student.features([np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1] * 2)
    out = student.generate(f["input_features"], f["feature_lens"], max_new_tokens=6, record_topk=5)
    banned = set(student.tokenizer.all_special_ids) - {student.stop_id}
    for ids, topk in zip(out["ids"], out["topk"]):
        assert not banned & set(ids)
        assert topk.shape[1] == 5 and topk.shape[0] in (len(ids), len(ids) + 1)  # + the stop step when it stopped
        for t, tid in enumerate(ids):
            assert tid in topk[t].tolist()  # the chosen token is always in S_t
    sampled = student.generate(
        f["input_features"], f["feature_lens"], max_new_tokens=6, do_sample=True, temperature=1.5, record_topk=3
    )
    for ids, topk in zip(sampled["ids"], sampled["topk"]):
        assert all(tid in topk[t].tolist() for t, tid in enumerate(ids))


def test_batched_generation_equals_single(student):
    rng = np.random.default_rng(1)
    a = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 32000)]
    f = student.features(a)
    both = student.generate(f["input_features"], f["feature_lens"], max_new_tokens=5)["ids"]
    for i in range(2):
        g = student.features([a[i]])
        assert student.generate(g["input_features"], g["feature_lens"], max_new_tokens=5)["ids"][0] == both[i]


def test_save_load_roundtrip(student, tmp_path):
    f = student.features([np.zeros(16000, np.float32)])
    tg = [student.encode_text("hello world")]
    h1, _, _ = student.forward_hidden(f["input_features"], f["feature_lens"], tg)
    student.save_pretrained(tmp_path / "s")
    s2 = ArkStudent.from_pretrained(tmp_path / "s")
    h2, _, _ = s2.forward_hidden(f["input_features"], f["feature_lens"], tg)
    torch.testing.assert_close(h1, h2, atol=0, rtol=0)


def _ark_cfg(tiny_corpus, run_dir, stage, **kw):
    base = {
        "run_dir": str(run_dir),
        "stage": stage,
        "model": {
            "encoder": "bundled:tiny.en",
            "llm": "config",
            "llm_config": TINY_LLM,
            "tokenizer": "whisper",
            "transcript_prefix": " ",
            "freeze_encoder": True,
        },
        "teacher": {"kind": "whisper", "name_or_path": "bundled:tiny.en"},
        "opd": {"top_k": 8, "max_new_tokens": 12},
        "data": {
            "train": [str(tiny_corpus / "en_train" / "manifest.jsonl")],
            "test": [str(tiny_corpus / "en_test" / "manifest.jsonl")],
            "batch_seconds": 12.0,
            "num_buckets": 2,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "trainer": {"max_steps": 3, "log_every_n_steps": 1, "progress_bar": False},
        "decoding": {"max_new_tokens": 12},
    }
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return from_dict(ArkConfig, base)


@pytest.fixture(scope="module")
def teacher(whisper_tiny):
    from common.teachers.whisper_teacher import WhisperTeacher

    return WhisperTeacher(*whisper_tiny)


def test_sft_td_opd_fit_and_reload(tiny_corpus, tmp_path, teacher):
    from ark_asr.run import fit
    from common.teachers.cache import CacheConfig, build_cache

    sft = fit(_ark_cfg(tiny_corpus, tmp_path / "sft", "sft"))
    assert sft["steps"] == 3 and "en_test" in sft["sets"]
    assert (tmp_path / "sft" / "student" / "ark_config.json").is_file()
    cache = tmp_path / "cache"
    build_cache(
        CacheConfig(
            manifest=str(tiny_corpus / "en_train" / "manifest.jsonl"),
            out_dir=str(cache),
            top_k=4,
            shard_size=64,
            max_new_tokens=30,
        ),
        teacher=teacher,
        progress=False,
    )
    td = fit(
        _ark_cfg(
            tiny_corpus, tmp_path / "td", "td", teacher_cache=str(cache), model={"init_from": str(tmp_path / "sft")}
        )
    )
    assert td["teacher_labels"]["kept"] > 0
    opd = fit(
        _ark_cfg(tiny_corpus, tmp_path / "opd", "opd", model={"init_from": str(tmp_path / "td")}), teacher=teacher
    )
    assert opd["steps"] == 3 and opd["token_map_teacher_coverage"] > 0.99
    ck = torch.load(tmp_path / "opd" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("teacher") for k in ck["state_dict"])
    # the saved student reloads and evaluates through `asr-distill evaluate`
    import json

    from common.cli import main

    out = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "opd" / "student"),
                "--manifest",
                str(tiny_corpus / "en_test" / "manifest.jsonl"),
                "--out",
                str(out),
                "decoding.max_new_tokens=8",
            ]
        )
        == 0
    )
    res = json.loads((out / "summary.json").read_text())
    assert res["sets"]["en_test"]["n_utts"] == 8


def test_opd_step_diagnostics(tiny_corpus, teacher):
    from ark_asr.run import build

    cfg = _ark_cfg(tiny_corpus, "/tmp/unused", "opd")
    module, dm, _ = build(cfg, teacher)
    batch = next(iter(dm.train_dataloader()))
    loss, logs = module.opd_step(batch)
    k = cfg.opd.top_k
    assert torch.isfinite(loss)
    assert k <= logs["vuss"].item() <= 2 * k
    assert 0 <= logs["overlap_ratio"].item() <= 1 and 0 <= logs["teacher_mass_overlap"].item() <= 1
    loss.backward()
    grads = [p.grad for p in module.student.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for variant in (
        {"support": "teacher"},
        {"direction": "jsd"},
        {"teacher_values": "raw_logit_topk"},
        {"rollout": "sample"},
    ):
        cfg2 = _ark_cfg(tiny_corpus, "/tmp/unused", "opd", opd={**{"top_k": 8, "max_new_tokens": 12}, **variant})
        module.cfg = cfg2
        l2, _ = module.opd_step(batch)
        assert torch.isfinite(l2), variant


def test_encoder_rope_option_matches_reference_attention(student):
    """RoPE attention: without rotation (zero angle) it equals Whisper's own attention on the same weights."""
    from ark_asr.model import RotarySelfAttention

    layer = student.encoder.layers[0]
    rot = RotarySelfAttention(layer.self_attn)
    x = torch.randn(2, 7, rot.head_dim * rot.num_heads)
    rot.inv_freq.zero_()  # all angles 0: plain attention
    ref, _ = layer.self_attn(hidden_states=x)
    torch.testing.assert_close(rot(x)[0], ref, atol=1e-5, rtol=1e-5)
    s = build_student(_model_cfg(encoder_rope=True))
    f = s.features([np.zeros(16000, np.float32)])
    h, _, mask = s.forward_hidden(f["input_features"], f["feature_lens"], [s.encode_text("hi")])
    assert torch.isfinite(h).all() and all(isinstance(l.self_attn, RotarySelfAttention) for l in s.encoder.layers)
