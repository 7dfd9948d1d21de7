"""Ark-ASR student and its SFT / TD / OPD stages on a tiny random LM with the real tiny.en encoder."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ark_cfg, ark_model_cfg

from ark_asr.config import ArkModelConfig
from ark_asr.model import ARK_SPECIALS, ArkStudent, ArkTranscriber, build_student


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_student(ark_model_cfg())


def test_paper_scale_student_on_meta():
    """The paper configs' student: a Qwen2 LM (q/k/v biases, no q/k-norm) behind the released rotary encoder."""
    from transformers import Qwen2ForCausalLM, Qwen3ForCausalLM

    from ark_asr.model import RotarySelfAttention
    from common.app.experiment import load_experiment

    repo = Path(__file__).resolve().parents[1]
    paper, _ = load_experiment(repo / "configs" / "ark_asr" / "sft.yaml", [])
    assert paper.model.llm.startswith("Qwen/Qwen2") and paper.model.encoder_positions == "rope_released"
    cfg = ArkModelConfig(encoder="preset:whisper-large-v3", llm="preset:qwen2-0.5b", tokenizer="qwen3")
    s = build_student(cfg, device="meta")
    assert type(s.llm) is Qwen2ForCausalLM and s.llm.model.layers[0].self_attn.q_proj.bias is not None
    assert all(isinstance(layer.self_attn, RotarySelfAttention) for layer in s.encoder.layers)
    assert s.encoder.layers[0].self_attn.rot_dim == 64 / 2 and s.encoder.max_frames == 40 * 50
    n_llm = sum(p.numel() for p in s.llm.parameters())
    n_enc = sum(p.numel() for p in s.encoder.parameters())
    n_ad = sum(p.numel() for p in s.adapter.parameters()) + sum(p.numel() for p in s.norm.parameters())
    print(f"paper-scale Ark student: LLM {n_llm / 1e6:.1f}M, encoder {n_enc / 1e6:.1f}M, adapter {n_ad / 1e6:.1f}M")
    assert 0.45e9 < n_llm < 0.55e9 and 0.6e9 < n_enc < 0.7e9
    assert s.adapter[0].in_features == 4 * 1280 and s.adapter[0].out_features == 2 * 896
    ablation = build_student(replace(cfg, llm="preset:qwen3-0.6b"), device="meta")  # Qwen3: an ablation
    assert type(ablation.llm) is Qwen3ForCausalLM


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
    assert f["input_features"].shape[-1] == 300  # padded to the longest clip only (the released front end)


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


def test_sft_td_opd_fit_and_reload(tiny_corpus, tmp_path, teacher):
    from ark_asr.run import fit
    from common.teachers.cache import CacheConfig, build_cache

    sft = fit(ark_cfg(tiny_corpus, tmp_path / "sft", "sft"))
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
        ark_cfg(
            tiny_corpus, tmp_path / "td", "td", teacher_cache=str(cache), model={"init_from": str(tmp_path / "sft")}
        )
    )
    assert td["teacher_labels"]["kept"] > 0
    opd = fit(ark_cfg(tiny_corpus, tmp_path / "opd", "opd", model={"init_from": str(tmp_path / "td")}), teacher=teacher)
    assert opd["steps"] == 3 and opd["token_map_teacher_coverage"] > 0.99
    ck = torch.load(tmp_path / "opd" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("teacher") for k in ck["state_dict"])
    # the saved student reloads and evaluates through `asr-distill evaluate`
    import json

    from common.app.cli import main

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

    cfg = ark_cfg(tiny_corpus, "/tmp/unused", "opd")
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

    # each variant changes what its name says (same batch, same weights, greedy rollouts are deterministic)
    def run(**variant):
        module.cfg = ark_cfg(tiny_corpus, "/tmp/unused", "opd", opd={**{"top_k": 8, "max_new_tokens": 12}, **variant})
        torch.manual_seed(0)
        out = module.opd_step(batch)
        assert torch.isfinite(out[0]), variant
        return out

    base_loss, base_logs = run()
    _, t_logs = run(support="teacher")  # U_t = K_t alone: at most k candidates, fewer than the union
    assert t_logs["vuss"] <= k and t_logs["vuss"] < base_logs["vuss"]
    for variant in ({"direction": "jsd"}, {"direction": "reverse"}, {"teacher_values": "raw_logit_topk"}):
        assert not torch.isclose(run(**variant)[0], base_loss), variant  # another divergence / other teacher values
    _, sampled = run(rollout="sample", temperature=5.0)  # a hot sampled rollout is not the greedy one
    _, greedy = run()
    assert sampled["rollout_len"] != greedy["rollout_len"] or sampled["vuss"] != greedy["vuss"]


def _glm_rope_reference(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """The released rotary scheme written independently: the first d/2 dims of each head as complex numbers
    (x_2i + i x_2i+1) multiplied by exp(i t theta_j), theta_j = base^(-2j / (d/2)); the rest unchanged."""
    d = x.shape[-1]
    r = d // 2
    theta = base ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)  # (r/2,)
    t = torch.arange(x.shape[-2], dtype=torch.float64)[:, None]
    z = torch.view_as_complex(x[..., :r].double().reshape(*x.shape[:-1], r // 2, 2).contiguous())
    z = z * torch.polar(torch.ones_like(t * theta), t * theta)
    return torch.cat([torch.view_as_real(z).flatten(-2).to(x.dtype), x[..., r:]], -1)


def test_encoder_rotary_positions_match_the_release_and_lift_the_30s_limit(student):
    """rope_released equals an independent complex-number rotation of the first half of each head (interleaved
    pairs, base 10000); with zero angles either style is Whisper's own attention; rotary students take 35 s of audio
    (up to model.max_audio_seconds), absolute positions refuse it in one line."""
    from ark_asr.model import RotarySelfAttention

    layer = student.encoder.layers[0]
    x = torch.randn(2, 3, 7, layer.self_attn.head_dim)
    released = RotarySelfAttention(layer.self_attn, "released")
    torch.testing.assert_close(released.rotate(x), _glm_rope_reference(x), atol=1e-5, rtol=1e-5)
    full = RotarySelfAttention(layer.self_attn, "full")
    assert (full.rotate(x) - released.rotate(x)).abs().max() > 0.1  # two different schemes
    h = torch.randn(2, 7, released.head_dim * released.num_heads)
    ref, _ = layer.self_attn(hidden_states=h)
    for rot in (released, full):
        rot.inv_freq.zero_()  # all angles 0: plain attention
        torch.testing.assert_close(rot(h)[0], ref, atol=1e-5, rtol=1e-5)
    long = [np.zeros(16000 * 35, np.float32)]
    for positions in ("rope_released", "rope_full"):
        s = build_student(ark_model_cfg(encoder_positions=positions))
        assert all(isinstance(layer.self_attn, RotarySelfAttention) for layer in s.encoder.layers)
        f = s.features(long)
        hid, _, mask = s.forward_hidden(f["input_features"], f["feature_lens"], [s.encode_text("hi")])
        assert torch.isfinite(hid).all() and s.n_audio_tokens(f["feature_lens"]) == [437]
        assert ArkTranscriber(s).max_seconds == 40.0
    f = student.features(long)
    with pytest.raises(ValueError, match="exceeds the encoder's position table"):
        student.forward_hidden(f["input_features"], f["feature_lens"], [student.encode_text("hi")])


# -- OPD fidelity (the authors' trainer): each of these failed before the fix --------------------------------------
def _opd_module(tiny_corpus, teacher, **kw):
    from ark_asr.run import build

    module, dm, _ = build(ark_cfg(tiny_corpus, "/tmp/unused", "opd", **kw), teacher)
    return module, next(iter(dm.train_dataloader()))


def _finite_grads_and_update(module, loss):
    params = [p for p in module.student.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    torch.optim.AdamW(params, lr=1e-3).step()
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(b, p) for b, p in zip(before, params))  # the step moved the weights


def test_lora_sft_and_opd_steps(tiny_corpus, teacher):
    """model.lora_rank=4: the PEFT wrapper's .model is the causal LM, not its transformer; both steps run, only the
    LoRA adapters (and the adapter MLP) train, and the saved student is the merged plain model."""
    module, batch = _opd_module(tiny_corpus, teacher, model={"lora_rank": 4})
    trainable = [n for n, p in module.student.llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    loss, logs = module.ce_step(batch)
    _finite_grads_and_update(module, loss)
    module.student.zero_grad()
    loss, logs = module.opd_step(batch)
    assert torch.isfinite(loss) and logs["vuss"] >= 1
    _finite_grads_and_update(module, loss)


def test_token_map_is_one_to_one_for_the_stop_token(student, teacher):
    """Whisper-tokenizer student: <|endoftext|> matches the teacher's stop token by string, <|im_end|> by role; only
    <|im_end|> may stand for it, or the teacher's stop mass enters U_t twice."""
    from common.teachers.token_map import TokenMap

    tm = TokenMap(teacher.tokenizer, student.tokenizer, extra={teacher.stop_id: student.stop_id})
    assert tm.is_one_to_one
    s_eot = student.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tm.to_teacher(torch.tensor([s_eot, student.stop_id])).tolist() == [-1, teacher.stop_id]
    assert tm.to_student(torch.tensor([teacher.stop_id])).tolist() == [student.stop_id]


def test_control_tokens_cover_whisper_and_qwen3_specials(student):
    from common.teachers.qwen3 import load_qwen3_tokenizer
    from common.teachers.token_map import control_token_ids

    tok = student.tokenizer
    ids = set(student.control_ids.tolist())
    for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>", "<|endoftext|>", "<|audio|>"):
        assert tok.convert_tokens_to_ids(t) in ids, t  # all_special_ids alone holds only <|endoftext|>
    assert student.stop_id not in ids
    q = load_qwen3_tokenizer()
    q_ids = set(control_token_ids(q, {q.convert_tokens_to_ids("<|im_end|>")}, 151936))
    for t in ("<think>", "</think>", "<tool_call>", "<|fim_prefix|>", "<|endoftext|>"):
        assert q.convert_tokens_to_ids(t) in q_ids, t
    assert q.convert_tokens_to_ids("<|im_end|>") not in q_ids and 151935 in q_ids  # padding rows past the tokenizer


def test_rollout_and_student_candidates_never_hold_control_tokens(tiny_corpus, teacher):
    """Control tokens boosted far above everything else: the rollout and S_t still never contain them (the stop
    token is not a control token and stays allowed)."""
    module, batch = _opd_module(tiny_corpus, teacher)
    s = module.student
    boost = torch.zeros(s.lm_head().weight.shape[0])
    targets = [s.tokenizer.convert_tokens_to_ids(t) for t in ("<|en|>", "<|startoftranscript|>", "<|notimestamps|>")]
    boost[targets] = 1e4
    hook = s.lm_head().register_forward_hook(lambda m, i, out: out + boost.to(out.dtype))
    try:
        roll, texts, empty, stopped = module.rollout(batch)
        banned = set(s.control_ids.tolist())
        assert not any(banned & set(ids) for ids in roll["ids"])
        s_targets = [list(ids) + ([s.stop_id] if st else []) for ids, st in zip(roll["ids"], roll["stopped"])]
        s_targets = [t or [s.stop_id] for t in s_targets]
        f = batch
        hidden, tgt, mask = s.forward_hidden(f["input_features"], f["feature_lens"], s_targets)
        S = module.student_candidates(hidden, tgt, roll, s_targets)
        assert not banned & set(S[mask].flatten().tolist())
        assert ((S == tgt[..., None]).any(-1) | ~mask).all()  # the actual next token is always in S_t
    finally:
        hook.remove()


def test_student_stop_in_support_keep_or_only_where_generated(tiny_corpus, teacher):
    """opd.student_stop: keep (the paper's formula) leaves the stop token in S_t wherever it is among the student's
    top-k; generated_only (the released trainer) removes it except at the position of the stop."""
    module, batch = _opd_module(tiny_corpus, teacher)
    s = module.student
    roll, *_ = module.rollout(batch)
    s_targets = [s.encode_text("hello world and more") for _ in batch["ids"]]  # text, then the stop token
    boost = torch.zeros(s.lm_head().weight.shape[0])
    boost[s.stop_id] = 1e4  # the stop token in every position's top-k
    hook = s.lm_head().register_forward_hook(lambda m, i, out: out + boost.to(out.dtype))
    try:
        hidden, tgt, mask = s.forward_hidden(batch["input_features"], batch["feature_lens"], s_targets)
        kept = module.student_candidates(hidden, tgt, roll, s_targets)
        not_stop, at_stop = mask & (tgt != s.stop_id), mask & (tgt == s.stop_id)
        assert (kept == s.stop_id).any(-1)[mask].all()  # keep: a candidate at every position
        module.cfg.opd.student_stop = "generated_only"
        only = module.student_candidates(hidden, tgt, roll, s_targets)
        assert not (only == s.stop_id).any(-1)[not_stop].any() and (only == s.stop_id).any(-1)[at_stop].all()
        assert torch.equal(only[not_stop & ~(kept == s.stop_id).any(-1)], kept[not_stop & ~(kept == s.stop_id).any(-1)])
        loss, logs = module.opd_step(batch)
        assert torch.isfinite(loss) and 1 <= logs["vuss"] <= 2 * module.cfg.opd.top_k
    finally:
        module.cfg.opd.student_stop = "keep"
        hook.remove()


def test_student_candidates_come_from_the_rollout(tiny_corpus, teacher):
    """Where the re-scored targets are the rollout's own tokens, S_t is the top-k the rollout recorded."""
    module, batch = _opd_module(tiny_corpus, teacher)
    s = module.student
    roll, *_ = module.rollout(batch)
    s_targets = [list(ids) + ([s.stop_id] if st else []) for ids, st in zip(roll["ids"], roll["stopped"])]
    rows = [i for i, t in enumerate(s_targets) if t]
    s_targets = [t or [s.stop_id] for t in s_targets]
    hidden, tgt, mask = s.forward_hidden(batch["input_features"], batch["feature_lens"], s_targets)
    marker = {i: roll["topk"][i].clone() for i in rows}
    for i in rows:  # a recognisable recorded top-k (ids that are real text tokens): it must be what S_t holds
        roll["topk"][i] = torch.arange(100, 100 + module.cfg.opd.top_k).repeat(len(s_targets[i]), 1)
        roll["topk"][i][:, -1] = torch.tensor(s_targets[i])
    S = module.student_candidates(hidden, tgt, roll, s_targets)
    for i in rows:
        n = len(s_targets[i])
        assert torch.equal(S[i, :n], roll["topk"][i]), i
    assert marker  # the batch had rollouts to compare


def test_teacher_scores_mask_control_tokens(teacher):
    """block_control: Whisper's specials, timestamps and suppress_tokens leave the teacher distribution before its top-k
    and log-softmax; the rest renormalises (checked against a hand computation)."""
    rng = np.random.default_rng(0)
    batch = teacher.prepare([rng.standard_normal(16000).astype(np.float32) * 0.1], ["en"])
    targets = [teacher.encode_text("hello world", "en")]
    sc = teacher.score(batch, targets, top_k=8, block_control=True)
    free = teacher.score(batch, targets, top_k=8)
    blocked = set(teacher.control_ids)
    assert teacher.stop_id not in blocked and len(blocked) > 1000  # timestamps included
    assert not blocked & set(sc.topk_ids[sc.mask].flatten().tolist())
    logits = (free.hidden[sc.mask] @ teacher.model.proj_out.weight.T).float()
    logits[:, sorted(blocked)] = float("-inf")
    ref = torch.log_softmax(logits, -1)
    torch.testing.assert_close(sc.topk_logprobs[sc.mask], ref.topk(8, -1).values, atol=1e-4, rtol=0)
    probe = torch.tensor([sorted(blocked)[0], teacher.stop_id, 1000]).expand(1, sc.mask.shape[1], 3).contiguous()
    got = sc.gather(probe)[sc.mask]
    assert torch.isinf(got[:, 0]).all() and (got[:, 0] < 0).all()
    torch.testing.assert_close(got[:, 1:], ref[:, [teacher.stop_id, 1000]], atol=1e-4, rtol=0)


def test_teacher_candidates_need_two_valid_entries(tiny_corpus, teacher):
    from types import SimpleNamespace

    module, _ = _opd_module(tiny_corpus, teacher)
    tm = module.token_map
    unmapped = len(tm.t2s) + 5  # a Whisper timestamp id: past the tokenizer, no student counterpart
    assert tm.to_student(torch.tensor([unmapped, len(tm.t2s) - 1])).tolist()[0] == -1
    mapped = [int(i) for i in (tm.t2s >= 0).nonzero()[:3, 0]]
    ids = torch.tensor([[[mapped[0], unmapped, unmapped], [mapped[0], mapped[1], unmapped], mapped]])
    lps = torch.tensor([[[-0.1, -1.0, -2.0], [-0.1, float("-inf"), -2.0], [-0.1, -1.0, -2.0]]])
    K = module.teacher_candidates(SimpleNamespace(topk_ids=ids, topk_logprobs=lps), 3)
    assert K[0, 0].tolist() == [-1, -1, -1]  # one mapped entry: no teacher set
    assert K[0, 1].tolist() == [-1, -1, -1]  # the second mapped entry is not finite: one valid left
    assert K[0, 2].tolist() == tm.to_student(torch.tensor(mapped)).tolist()


def test_stop_target_only_when_the_student_stopped_and_language_from_the_rollout(tiny_corpus, teacher):
    module, batch = _opd_module(tiny_corpus, teacher)
    b = {"languages": ["en", "en"], "language_declared": [True, False]}
    targets, langs = module.teacher_targets(["one two", "你好"], [False, True], b)
    assert targets[0] == teacher.encode_text("one two", "en")[:-1] and targets[0][-1] != teacher.stop_id
    assert targets[1][-1] == teacher.stop_id
    assert langs == ["en", "zh"]  # declared: kept; not declared: inferred from the transcript being scored
    # a rollout cut at max_new_tokens is scored without a stop position
    short, batch2 = _opd_module(tiny_corpus, teacher, opd={"top_k": 8, "max_new_tokens": 1})
    roll, texts, empty, stopped = short.rollout(batch2)
    cut = [i for i, (e, st) in enumerate(zip(empty, roll["stopped"])) if not e and not st]
    t_targets, _ = short.teacher_targets(texts, stopped, batch2)
    assert all(t_targets[i][-1] != teacher.stop_id or len(t_targets[i]) == 1 for i in cut)


def test_manifest_records_whether_the_language_was_declared(tmp_path, real_speech):
    import json

    from common.data.datamodule import AsrDataset
    from common.data.manifests import load_manifest

    rows = [json.loads(l) for l in (real_speech / "manifest.jsonl").read_text().splitlines()][:2]
    for r in rows:
        r["audio_filepath"] = str(real_speech / r["audio_filepath"])
    rows[1].pop("language")
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cuts, _ = load_manifest(str(m))
    batch = AsrDataset(lambda a, t, lang: {})[cuts]
    from common.text import detect_language

    assert batch["language_declared"] == [True, False]
    assert batch["languages"][1] == detect_language(rows[1]["text"])  # detected from the reference, and flagged so


def test_retok_mismatch_is_per_step(tiny_corpus, teacher):
    module, batch = _opd_module(tiny_corpus, teacher)
    module.token_map.stats.n_texts, module.token_map.stats.n_mismatched = 1000, 1000  # an earlier history
    _, logs = module.opd_step(batch)
    n = module.token_map.stats.n_texts - 1000
    assert n > 0
    assert logs["retok_mismatch"] == pytest.approx((module.token_map.stats.n_mismatched - 1000) / n)


def test_paper_configs_carry_the_authors_settings():
    from pathlib import Path

    from common.app.experiment import load_experiment

    repo = Path(__file__).resolve().parents[1]
    for stage in ("sft", "td", "opd"):
        cfg, _ = load_experiment(repo / "configs" / "ark_asr" / f"{stage}.yaml", [])
        assert cfg.optim.min_lr_ratio == 0.1 and cfg.optim.schedule == "cosine", stage
        assert cfg.data.max_cuts == 40, stage


@pytest.mark.slow
def test_paper_scale_sft_and_opd_steps_bf16_cpu(real_speech, tmp_path):
    """The paper scale runs, not only builds: one SFT step and one OPD step (forward + backward, no optimizer state)
    with the paper-scale student (large-v3 encoder dims, Qwen3-0.6B LM dims, the Qwen3 tokenizer) and a teacher of
    the Qwen3-ASR-1.7B architecture (audio tower 24 x 1024 projected to 2048 (our reading of the checkpoint's
    config), Qwen3-1.7B LM), random weights in bf16, on two short real clips on CPU, through the paper OPD config and
    ``ark_asr.run.build``."""
    import json
    from pathlib import Path

    from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    from ark_asr.run import build
    from common.app.experiment import load_experiment
    from common.teachers.qwen3_asr import Qwen3ASRTeacher, build_qwen3_asr_tokenizer

    rows = [json.loads(l) for l in (real_speech / "manifest.jsonl").read_text().splitlines() if l.strip()]
    clips = sorted((r for r in rows if r["language"] == "en"), key=lambda r: r["duration"])[:2]
    for c in clips:
        c["audio_filepath"] = str(real_speech / c["audio_filepath"])
    manifest = tmp_path / "two" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("".join(json.dumps(c) + "\n" for c in clips))
    repo = Path(__file__).resolve().parents[1]
    overrides = [
        "model.encoder=preset:whisper-large-v3",  # the hub ids of the config need a network; same dims
        "model.llm=preset:qwen3-0.6b",
        "model.tokenizer=qwen3",
        "model.init_from=null",
        f"data.train=[{manifest}]",
        "data.dev=[]",
        "data.test=[]",
        "data.batch_seconds=30",
        "data.num_buckets=2",
        f"run_dir={tmp_path / 'run'}",
        "teacher.device=cpu",
    ]
    cfg, _ = load_experiment(repo / "configs" / "paper" / "ark_table1" / "ark_base_opd.yaml", overrides)
    assert cfg.opd.top_k == 32 and cfg.opd.max_new_tokens == 64
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build the 1.7B teacher directly in bf16 (half the memory and time)
    try:
        tcfg = Qwen3ASRConfig(audio_config={"output_dim": 2048})
        teacher = Qwen3ASRTeacher(
            Qwen3ASRForConditionalGeneration(tcfg), build_qwen3_asr_tokenizer(), dtype=torch.bfloat16
        )
    finally:
        torch.set_default_dtype(prev)
    module, dm, info = build(cfg, teacher)
    module.student.to(torch.bfloat16)
    n_llm = sum(p.numel() for p in module.student.llm.parameters())
    n_teacher = sum(p.numel() for p in teacher.model.parameters())
    assert 0.55e9 < n_llm < 0.65e9 and 1.8e9 < n_teacher < 2.6e9, (n_llm, n_teacher)
    batch = next(iter(dm.train_dataloader()))
    params = [p for p in module.student.parameters() if p.requires_grad]
    for step in (module.ce_step, module.opd_step):
        loss, logs = step(batch)
        assert loss.dtype in (torch.bfloat16, torch.float32) and torch.isfinite(loss), step.__name__
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), step.__name__
        module.student.zero_grad(set_to_none=True)
    assert 32 <= logs["vuss"].item() <= 64


def test_audio_only_data_trains_td_and_opd_without_references(tiny_corpus, tmp_path, teacher):
    """Untranscribed audio (a manifest without `text`): the teacher cache transcribes it, TD trains on those
    transcripts and OPD on rollouts; no reference is ever read (batch texts are empty, even where a row has one)."""
    import json

    from ark_asr.run import build, fit
    from common.teachers.cache import CacheConfig, build_cache

    rows = [json.loads(line) for line in (tiny_corpus / "en_train" / "manifest.jsonl").read_text().splitlines()]
    d = tmp_path / "untranscribed"
    d.mkdir()
    for r in rows:
        r["audio_filepath"] = str((tiny_corpus / "en_train" / r["audio_filepath"]).resolve())
    for r in rows[1:]:  # row 0 keeps its transcript: audio-only loading must drop it too
        r.pop("text")
    man = str(d / "manifest.jsonl")
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "cache"
    build_cache(
        CacheConfig(manifest=man, out_dir=str(cache), top_k=4, max_new_tokens=20, audio_only=True),
        teacher=teacher,
        progress=False,
    )
    audio = {"train": [man], "train_audio_only": True}
    module, dm, _ = build(ark_cfg(tiny_corpus, "/tmp/unused", "opd", data=audio), teacher)
    assert all(t == "" for b, _ in zip(dm.train_dataloader(), range(3)) for t in b["texts"])
    td = fit(ark_cfg(tiny_corpus, tmp_path / "td", "td", teacher_cache=str(cache), data=audio))
    assert td["teacher_labels"]["kept"] > 0
    opd = fit(
        ark_cfg(tiny_corpus, tmp_path / "opd", "opd", data=audio, model={"init_from": str(tmp_path / "td")}),
        teacher=teacher,
    )
    assert opd["steps"] == 3
    with pytest.raises(ValueError, match="audio-only data is for td and opd"):
        ark_cfg(tiny_corpus, "/tmp/unused", "sft", data=audio)
    with pytest.raises(ValueError, match="no references to filter"):
        ark_cfg(tiny_corpus, "/tmp/unused", "td", teacher_cache=str(cache), td_max_wer=0.2, data=audio)


def test_opd_teacher_encoder_cache_is_exact_and_bounded(tiny_corpus, teacher):
    """opd.teacher_encoder_cache_mb: the teacher's encoder states are computed once per utterance and reused; the
    step's loss and gradients equal those of the uncached step, and the cache never grows past its budget."""
    from common.teachers.encoder_cache import clear_shared

    cached, batch = _opd_module(tiny_corpus, teacher, opd={"teacher_encoder_cache_mb": 100})
    plain, _ = _opd_module(tiny_corpus, teacher)
    plain.student.load_state_dict(cached.student.state_dict())
    n = len(batch["ids"])
    results = []
    for module, expect_hits in ((plain, [0, 0]), (cached, [0, n])):
        for hits in expect_hits:  # the second step reads every utterance's states from the cache
            module.student.zero_grad()
            loss, logs = module.opd_step(batch)
            loss.backward()
            assert logs["teacher_encoder_cache_hits"] == hits
        results.append((loss.detach(), [p.grad.clone() for p in module.student.parameters() if p.grad is not None]))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    store = cached._enc_cache._store
    assert len(store) == n  # keyed by the features' bytes (common.teachers.encoder_cache.content_keys)
    assert cached._enc_cache.bytes == sum(t.numel() * t.element_size() for t in store.values())
    clear_shared()  # the store is the process's, per encoder: a new, small one
    small, _ = _opd_module(tiny_corpus, teacher, opd={"teacher_encoder_cache_mb": 1.0})  # room for no 30 s state
    loss, logs = small.opd_step(batch)
    assert not len(small._enc_cache) and torch.isfinite(loss)
    assert small.opd_step(batch)[1]["teacher_encoder_cache_hits"] == 0


def test_self_training_control_trains_on_the_students_own_transcripts(tiny_corpus, tmp_path):
    """td_source=self (the demo's control of OPD): the starting student's own greedy transcripts of the training
    audio become the targets - no teacher, no reference - and a student is needed to make them."""
    from ark_asr.run import build

    start = build_student(ark_model_cfg()).save_pretrained(tmp_path / "start")
    cfg = ark_cfg(
        tiny_corpus, tmp_path / "run", "td", td_source="self", teacher_cache=None, model={"init_from": str(start)}
    )
    module, dm, info = build(cfg)
    cuts = list(dm.train_cuts)
    assert info["self_labels"]["kept"] == len(cuts) > 0
    s = ArkStudent.from_pretrained(start).eval()
    f = s.features([c.load_audio()[0] for c in cuts[:2]])
    own = [s.decode(i) for i in s.generate(f["input_features"], f["feature_lens"], cfg.opd.max_new_tokens)["ids"]]
    refs = {r.id: r.supervisions[0].text for r in cuts}
    assert [refs[c.id] for c in cuts[:2]] == own  # the student's words, not the references
    loss, _ = module.ce_step(next(iter(dm.train_dataloader())))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="td_source=self"):
        ark_cfg(tiny_corpus, tmp_path / "r2", "td", td_source="self", teacher_cache=None)


def test_opd_step_encodes_the_audio_once_with_a_frozen_encoder(tiny_corpus, teacher, monkeypatch):
    """A frozen, deterministic encoder's states from the rollout are the re-score's: one encoder pass per OPD step
    (counted by a forward hook on the real encoder), and the loss and every gradient equal those of the step that
    encodes the batch twice, bit for bit. A trainable encoder, or one whose dropout is live, is never reused."""
    module, batch = _opd_module(tiny_corpus, teacher)
    s = module.student
    module.train()  # as in a fit: the frozen encoder is in training mode too
    assert s.encoder_reusable
    calls = []
    hook = s.encoder.register_forward_hook(lambda *_: calls.append(1))
    results = []
    for reuse in (True, False):
        monkeypatch.setattr(type(s), "encoder_reusable", property(lambda self, r=reuse: r))
        calls.clear()
        s.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss, _ = module.opd_step(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in s.named_parameters() if p.grad is not None}
        results.append((len(calls), loss.detach(), grads))
    hook.remove()
    monkeypatch.undo()
    (n1, l1, g1), (n2, l2, g2) = results
    assert (n1, n2) == (1, 2)
    assert torch.equal(l1, l2) and g1.keys() == g2.keys() and g1
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    assert not any(k.startswith("encoder.") for k in g1)  # frozen: no gradient reaches it
    layer = s.encoder.layers[0]
    old = layer.dropout
    layer.dropout = 0.1  # a live dropout rate in training mode: two passes would differ
    try:
        assert not s.encoder_reusable
        s.eval()
        assert s.encoder_reusable  # eval mode: dropout is off
        s.train()
    finally:
        layer.dropout = old
    s.encoder.layers[0].fc1.weight.requires_grad_(True)  # a trainable encoder: its states need their graph
    assert not s.encoder_reusable
