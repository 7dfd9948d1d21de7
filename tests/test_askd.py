from pathlib import Path

import numpy as np
import pytest
import torch

from askd_whisper.config import CurriculumConfig, SelfKDConfig
from askd_whisper.schedules import adaptive_token_weights, self_kd_weight, teacher_weight
from askd_whisper.student import build_student, spaced_layers

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_lambda_schedules_values_and_monotone(kind):
    c = CurriculumConfig(schedule=kind, lambda_0=0.9, lambda_min=0.1)
    assert teacher_weight(c, 0.0) == pytest.approx(0.9)
    assert teacher_weight(c, 0.5) == pytest.approx(0.5)
    assert teacher_weight(c, 1.0) == pytest.approx(0.1)
    c0 = CurriculumConfig(schedule=kind, lambda_0=0.9, lambda_min=0.0)
    vals = [teacher_weight(c0, r) for r in np.linspace(0, 1, 21)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_other_schedules():
    assert teacher_weight(CurriculumConfig(schedule="constant", lambda_0=0.9), 0.7) == 0.9
    exp = CurriculumConfig(schedule="exponential", lambda_0=0.8, lambda_min=0.1, gamma=0.5)
    assert [teacher_weight(exp, 0, epoch=e) for e in range(4)] == [0.8, 0.4, 0.2, 0.1]
    step = CurriculumConfig(schedule="step", lambda_0=0.8, lambda_min=0.0, gamma=0.5, milestones=[0.3, 0.6])
    assert [teacher_weight(step, r) for r in (0.0, 0.5, 1.0)] == [0.8, 0.4, 0.2]
    assert self_kd_weight(SelfKDConfig(beta_schedule="linear", beta_0=0.2, beta_max=0.8), 0.5) == pytest.approx(0.5)
    assert self_kd_weight(SelfKDConfig(beta_schedule="constant", beta_0=0.2, beta_max=0.8), 0.9) == 0.2


def test_adaptive_weights_gating_and_confidence():
    t = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]]])
    y = torch.tensor([[0, 2]])
    top1_prob, top1 = torch.softmax(t, -1).max(-1)
    assert adaptive_token_weights("gating", 0.5, top1, top1_prob, y).tolist() == [[0.5, 0.0]]
    conf = adaptive_token_weights("confidence", 1.0, top1, top1_prob, y)
    assert conf[0, 0].item() == pytest.approx(torch.softmax(t[0, 0], -1).max().item())


def test_spaced_layers():
    assert spaced_layers(32, 2) == [0, 31]
    assert spaced_layers(4, 2) == [0, 3]
    assert spaced_layers(32, 4) == [0, 10, 21, 31]
    with pytest.raises(ValueError):
        spaced_layers(4, 5)


def test_student_copies_teacher_layers(whisper_tiny):
    teacher, _ = whisper_tiny
    s = build_student(teacher, 2)
    assert s.config.decoder_layers == 2
    torch.testing.assert_close(s.model.decoder.layers[1].fc1.weight, teacher.model.decoder.layers[3].fc1.weight)
    torch.testing.assert_close(s.model.encoder.layers[2].fc1.weight, teacher.model.encoder.layers[2].fc1.weight)
    assert s.proj_out.weight.data_ptr() == s.model.decoder.embed_tokens.weight.data_ptr()
    assert not any(p.requires_grad for p in s.model.encoder.parameters())


def test_large_v3_two_layer_student_on_meta_has_756m_params():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        vocab_size=51866,
        num_mel_bins=128,
        d_model=1280,
        encoder_layers=32,
        decoder_layers=32,
        encoder_attention_heads=20,
        decoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_ffn_dim=5120,
    )
    with torch.device("meta"):
        teacher = WhisperForConditionalGeneration(cfg)
    student = build_student(teacher, 2)
    n = sum(p.numel() for p in student.parameters())
    print(
        f"large-v3 2-layer student: {n / 1e6:.1f}M parameters "
        f"(teacher {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M)"
    )
    assert 740e6 < n < 770e6


def _cfg(tiny_corpus, run_dir, **over):
    from askd_whisper.config import AskdConfig
    from common.config import from_dict

    base = {
        "run_dir": str(run_dir),
        "student": {"n_decoder_layers": 1},
        "data": {
            "train": [str(tiny_corpus / "en_train" / "manifest.jsonl")],
            "batch_seconds": 12.0,
            "num_buckets": 2,
            "shuffle": True,
            "seed": 0,
        },
        "trainer": {"max_steps": 6, "log_every_n_steps": 1, "progress_bar": False, "seed": 0},
        "self_kd": {"enabled": True, "boundary": 0.5, "self_teacher": "ema", "ema_decay": 0.9},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "decoding": {"max_new_tokens": 20},
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return from_dict(AskdConfig, base)


@pytest.fixture(scope="module")
def teacher(whisper_tiny):
    from common.teachers.whisper_teacher import WhisperTeacher

    return WhisperTeacher(*whisper_tiny)


def _weights(run_dir):
    ck = torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ck["state_dict"], ck["askd"]["self_teacher"]


def test_weights_across_the_phase_boundary(tiny_corpus, tmp_path, teacher):
    """weights(): phase A lambda from the schedule with CE 1 - lambda (or the constant ce_weight), lambda 0 without a
    teacher, then phase B beta from its schedule with CE 1 - beta; the boundary at self_kd.boundary * max_steps."""
    from askd_whisper.module import AskdModule

    sk = {"boundary": 0.6, "beta_schedule": "linear", "beta_0": 0.2, "beta_max": 0.8}
    cur = {"schedule": "linear", "lambda_0": 0.9, "lambda_min": 0.1}
    m = AskdModule(_cfg(tiny_corpus, tmp_path / "w", trainer={"max_steps": 10}, self_kd=sk, curriculum=cur), teacher)
    assert m.boundary_step == 6
    approx = lambda *v: pytest.approx(v)  # noqa: E731
    assert tuple(m.weights(0)) == approx("A", 0.9, 0.0, 0.1)
    assert tuple(m.weights(3)) == approx("A", 0.5, 0.0, 0.5)
    assert tuple(m.weights(5)) == approx("A", 0.1 + 0.8 / 6, 0.0, 0.9 - 0.8 / 6)  # last phase-A step: r = 5/6
    assert tuple(m.weights(6)) == approx("B", 0.0, 0.2, 0.8)  # the boundary step is phase B
    assert tuple(m.weights(8)) == approx("B", 0.0, 0.5, 0.5)
    const_ce = _cfg(
        tiny_corpus,
        tmp_path / "c",
        trainer={"max_steps": 10},
        self_kd=sk,
        curriculum={**cur, "ce_weight": 0.8, "lambda_0": 1.0, "lambda_min": 1.0, "schedule": "constant"},
    )
    assert tuple(AskdModule(const_ce, teacher).weights(2)) == approx("A", 1.0, 0.0, 0.8)
    no_teacher = _cfg(
        tiny_corpus, tmp_path / "n", trainer={"max_steps": 10}, self_kd=sk, curriculum=cur, teacher_source="none"
    )
    assert tuple(AskdModule(no_teacher, teacher).weights(0)) == approx("A", 0.0, 0.0, 1.0)
    off = _cfg(tiny_corpus, tmp_path / "o", trainer={"max_steps": 10}, self_kd={**sk, "enabled": False}, curriculum=cur)
    assert AskdModule(off, teacher).boundary_step == 10 and m.weights(9).phase == "B"


def test_fit_then_resume_is_the_same_run(tiny_corpus, tmp_path, teacher):
    """2N steps in one go == N steps, stop, resume N more (phase B and the EMA self-teacher included)."""
    from askd_whisper.run import fit

    full = fit(_cfg(tiny_corpus, tmp_path / "full"), teacher=teacher)
    assert full["steps"] == 6
    assert not any(k.startswith("teacher") for k in _weights(tmp_path / "full")[0])  # teacher never in the checkpoint
    half = _cfg(tiny_corpus, tmp_path / "half")
    stopped = fit(half, teacher=teacher, stop_after_steps=3)  # phase A only, mid-epoch
    assert stopped["stopped_early"] and not (tmp_path / "half" / "summary.json").exists()
    assert fit(half, resume=True, teacher=teacher)["steps"] == 6
    a, ea = _weights(tmp_path / "full")
    b, eb = _weights(tmp_path / "half")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], atol=0, rtol=0, msg=k)


def test_kd_variants_run(tiny_corpus, tmp_path, teacher):
    from askd_whisper.run import fit

    for i, over in enumerate(
        [
            {
                "curriculum": {"schedule": "linear", "adaptive": "gating"},
                "self_kd": {"enabled": True, "self_teacher": "snapshot"},
            },
            {
                "curriculum": {"schedule": "step", "adaptive": "confidence"},
                "self_kd": {"enabled": True, "self_teacher": "prev_epoch"},
            },
            {"teacher_source": "none", "self_kd": {"enabled": False}},
        ]
    ):
        s = fit(_cfg(tiny_corpus, tmp_path / f"r{i}", trainer={"max_steps": 3}, **over), teacher=teacher)
        assert s["steps"] == 3


def test_export_loads_in_transformers_pipeline(tiny_corpus, tmp_path, teacher, real_speech):
    import transformers

    from askd_whisper.run import export, fit
    from common.audio import load_audio

    fit(_cfg(tiny_corpus, tmp_path / "run", trainer={"max_steps": 2}), teacher=teacher)
    out = export(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "hf")
    asr = transformers.pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    clip = load_audio(real_speech / "librivox_pocketsphinx" / "sense_and_sensibility_01_austen_64kb-0890.wav")
    text = asr({"raw": clip, "sampling_rate": 16000}, generate_kwargs={"max_new_tokens": 30})["text"]
    assert isinstance(text, str) and text.strip()
    student = transformers.WhisperForConditionalGeneration.from_pretrained(out)
    assert student.config.decoder_layers == 1


def test_cached_teacher_kd_and_pseudo_labels(tiny_corpus, tmp_path, teacher):
    """teacher_source=cache reads top-k at the label positions; labels=pseudo trains on filtered teacher transcripts."""
    from askd_whisper.run import build, fit
    from common.teachers.cache import CacheConfig, build_cache

    cache = tmp_path / "cache"
    build_cache(
        CacheConfig(
            manifest=str(tiny_corpus / "en_train" / "manifest.jsonl"),
            out_dir=str(cache),
            top_k=4,
            shard_size=64,
            max_new_tokens=20,
        ),
        teacher=teacher,
        progress=False,
    )
    cfg = _cfg(
        tiny_corpus,
        tmp_path / "c",
        teacher_source="cache",
        teacher_cache=str(cache),
        curriculum={"adaptive": "gating"},
        trainer={"max_steps": 2},
        self_kd={"enabled": False},
    )
    module, dm, _ = build(cfg, teacher)
    batch = next(iter(dm.train_dataloader()))
    ids, lps = module._cached_topk(batch, batch["labels"])
    labelled = batch["labels"] != -100
    assert (ids[labelled] >= 0).all() and (ids[~labelled] == -1).all()  # every label position has the cached top-k
    assert torch.isfinite(module.training_step(batch, 0))
    assert fit(cfg, teacher=teacher)["steps"] == 2
    pseudo = _cfg(
        tiny_corpus,
        tmp_path / "p",
        labels="pseudo",
        teacher_cache=str(cache),
        pseudo_label_max_wer=None,
        trainer={"max_steps": 2},
        self_kd={"enabled": False},
    )
    s = fit(pseudo, teacher=teacher)
    assert s["pseudo_labels"]["kept"] > 0 and s["steps"] == 2
