"""Released ARK-ASR checkpoints as Ark students: a tiny random checkpoint in the release layout (tests/ark_release.py)
loads with every tensor mapped, equals an independent forward of the architecture, transcribes through `asr-distill
evaluate`, starts SFT and OPD, round-trips, and every bad directory is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ark_release import ARK_PROMPT_TOKENS, ReferenceArk, write_tiny_release  # noqa: E402

from ark_asr.model import ArkStudent, check_model_dir, load_release  # noqa: E402
from ark_asr.release import ReleaseError  # noqa: E402
from common.app.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_tiny_release(tmp_path_factory.mktemp("release") / "ARK-ASR-tiny")


@pytest.fixture(scope="module")
def loaded(release):
    return load_release(release).eval()


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def test_release_loads_with_every_tensor_mapped_and_its_own_tokenizer(release, loaded):
    from safetensors import safe_open

    from ark_asr.release import map_names

    with safe_open(str(release / "model.safetensors"), framework="pt") as h:
        names = {k: None for k in h.keys()}
    mapped, ignored, unmapped = map_names(names)
    assert not unmapped and ignored == [
        "audio_encoder.whisper.layer_norm.bias",
        "audio_encoder.whisper.layer_norm.weight",
    ]
    own = set(loaded.state_dict())
    assert set(mapped) <= own and own - set(mapped) == {"llm.lm_head.weight"}  # tied to the embeddings
    cfg = json.loads((release / "config.json").read_text())
    ref_tok = ReferenceArk(release).tok
    assert loaded.audio_id == cfg["audio_token_id"] and len(loaded.tokenizer) == len(ref_tok)  # nothing appended
    assert type(loaded.llm).__name__ == "Qwen2ForCausalLM" and loaded.encoder.positions == "rope_released"
    user = ref_tok.convert_tokens_to_ids("<|user|>")
    assert user not in ref_tok.all_special_ids  # an added token that is not "special" ...
    assert user in loaded.control_ids.tolist() and loaded.stop_id not in loaded.control_ids.tolist()  # ... is blocked
    assert ArkStudent.from_pretrained(release).audio_id == loaded.audio_id  # from_pretrained accepts a release too


def test_release_logits_and_greedy_transcripts_equal_an_independent_forward(release, loaded):
    ref = ReferenceArk(release)
    for seconds in (1.37, 3.0):
        audio = _audio(seconds, seed=int(seconds * 100))
        f = loaded.features([audio])
        torch.testing.assert_close(f["input_features"], ref.features(audio))  # the release's front end, no rounding
        text = "hello world, this is ark"
        target = loaded.encode_text(text)
        hidden, tgt, mask = loaded.forward_hidden(f["input_features"], f["feature_lens"], [target])
        ours = loaded.lm_head()(hidden[0, : len(target)])
        z, n_prompt = ref.logits(f["input_features"], target[:-1])
        torch.testing.assert_close(ours, z[n_prompt - 1 :], atol=2e-4, rtol=2e-4)
        got = loaded.generate(f["input_features"], f["feature_lens"], max_new_tokens=8)["ids"][0]
        assert got == ref.greedy(f["input_features"], 8), seconds


def test_release_student_saves_and_reloads_identically(loaded, tmp_path):
    f = loaded.features([_audio(2.0)])
    target = [loaded.encode_text("one two three")]
    h1, _, _ = loaded.forward_hidden(f["input_features"], f["feature_lens"], target)
    loaded.save_pretrained(tmp_path / "s")
    again = ArkStudent.from_pretrained(tmp_path / "s")
    h2, _, _ = again.forward_hidden(f["input_features"], f["feature_lens"], target)
    torch.testing.assert_close(h1, h2, atol=0, rtol=0)
    assert len(again.tokenizer) == len(loaded.tokenizer) and again.cfg.encoder_positions == "rope_released"


def test_evaluate_transcribes_with_a_release_directory(release, tiny_corpus, tmp_path):
    out = tmp_path / "eval"
    manifest = tiny_corpus / "en_test" / "manifest.jsonl"
    args = ["evaluate", "--model", str(release), "--manifest", str(manifest), "--out", str(out)]
    assert main(args + ["decoding.max_new_tokens=6"]) == 0
    s = json.loads((out / "summary.json").read_text())["sets"]["en_test"]
    assert s["n_utts"] == 8 and s["error_rate"] >= 0


def _cfg(tiny_corpus, run_dir, stage, release, **kw):
    from ark_asr.config import ArkConfig
    from common.config import from_dict

    base = {
        "run_dir": str(run_dir),
        "stage": stage,
        "model": {"init_from": str(release), "encoder": "unused", "llm": "unused"},
        "teacher": {"kind": "whisper", "name_or_path": "bundled:tiny.en"},
        "opd": {"top_k": 8, "max_new_tokens": 6},
        "data": {
            "train": [str(tiny_corpus / "en_train" / "manifest.jsonl")],
            "batch_seconds": 12.0,
            "num_buckets": 2,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "trainer": {"max_steps": 2, "val_every_n_steps": 100, "log_every_n_steps": 1},
        "decoding": {"max_new_tokens": 6},
        **kw,
    }
    return from_dict(ArkConfig, base)


def test_sft_and_opd_start_from_a_release(release, tiny_corpus, tmp_path, whisper_tiny):
    """SFT 2 steps from the release; OPD 2 steps through the specialisation recipe's own config
    (configs/paper/ark_specialise/opd.yaml) on untranscribed audio, with a tiny teacher and one CPU process."""
    from ark_asr.run import fit
    from common.app.experiment import load_experiment
    from common.teachers.whisper_teacher import WhisperTeacher

    teacher = WhisperTeacher(*whisper_tiny)
    repo = Path(__file__).resolve().parents[1]
    train = tiny_corpus / "en_train" / "manifest.jsonl"
    recipe, _ = load_experiment(
        repo / "configs" / "paper" / "ark_specialise" / "opd.yaml",
        [
            f"model.init_from={release}",
            f"run_dir={tmp_path / 'opd'}",
            "teacher.kind=whisper",
            "teacher.name_or_path=bundled:tiny.en",
            "teacher.dtype=float32",
            f"data.train=[{train}]",
            "data.dev=[]",
            "data.test=[]",
            "data.batch_seconds=12",
            "data.num_buckets=2",
            "trainer.strategy=auto",
            "trainer.precision=32-true",
            "trainer.devices=1",
            "trainer.max_steps=2",
            "optim.warmup_steps=1",
            "opd.max_new_tokens=6",
            "decoding.max_new_tokens=6",
        ],
    )
    assert recipe.data.train_audio_only and recipe.model.init_from == str(release)
    for stage, cfg in (("sft", _cfg(tiny_corpus, tmp_path / "sft", "sft", release)), ("opd", recipe)):
        summary = fit(cfg, teacher=teacher)
        assert summary["steps"] == 2, stage
        student = ArkStudent.from_pretrained(tmp_path / stage / "student")
        assert student.cfg.encoder_positions == "rope_released" and student.audio_id == load_release(release).audio_id


def _variant(release: Path, tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    shutil.copytree(release, d)
    return d


def _rewrite_weights(d: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(d / "model.safetensors"))
    edit(sd)
    save_file(sd, str(d / "model.safetensors"))


def test_each_bad_release_directory_is_one_line_before_any_work(release, tiny_corpus, tmp_path, capsys):
    from ark_release import release_tokenizer

    cases = {}
    d = _variant(release, tmp_path, "unmapped")
    _rewrite_weights(d, lambda sd: sd.__setitem__("audio_encoder.extra_proj.weight", torch.zeros(2, 2)))
    cases[d] = "audio_encoder.extra_proj.weight"
    d = _variant(release, tmp_path, "missing")
    _rewrite_weights(d, lambda sd: sd.pop("audio_encoder.adapting.2.bias"))
    cases[d] = "missing from the checkpoint, e.g. audio_encoder.adapting.2.bias"
    d = _variant(release, tmp_path, "model_type")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2"}))
    cases[d] = "model_type 'qwen2'"
    d = _variant(release, tmp_path, "shape")
    (d / "config.json").write_text(json.dumps({**cfg, "merge_factor": 2}))
    cases[d] = "tensor audio_encoder.adapting.0.weight has shape"
    d = _variant(release, tmp_path, "no_rope_field")
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "use_rope"}))
    cases[d] = "config.json has no use_rope"
    d = _variant(release, tmp_path, "tokenizer")
    plain = release_tokenizer()
    for f in d.glob("tokenizer*"):
        f.unlink()
    from common.teachers.qwen3 import load_qwen3_tokenizer

    load_qwen3_tokenizer().save_pretrained(d)
    cases[d] = "the tokenizer lacks the Ark prompt tokens " + ", ".join(
        t for t in ["<|user|>", "<|begin_of_audio|>", "<|audio|>", "<|end_of_audio|>", "<|assistant|>"]
    )
    assert set(ARK_PROMPT_TOKENS) <= set(plain.get_vocab())
    for d, expected in cases.items():
        with pytest.raises(ReleaseError) as err:
            load_release(d)
        msg = str(err.value)
        assert expected in msg and str(d) in msg and "\n" not in msg, (d.name, msg)
        capsys.readouterr()
        out = tmp_path / f"eval_{d.name}"
        manifest = tiny_corpus / "en_test" / "manifest.jsonl"
        assert main(["evaluate", "--model", str(d), "--manifest", str(manifest), "--out", str(out)]) == 2
        line = capsys.readouterr().err.strip()
        assert expected in line and "\n" not in line, (d.name, line)
        with pytest.raises(ReleaseError) as err:  # fit's start-up check: headers and a meta-device model only
            check_model_dir(d)
        assert expected in str(err.value), (d.name, str(err.value))
    run_dir = tmp_path / "never"
    with pytest.raises(ReleaseError):
        from ark_asr.run import fit

        fit(_cfg(tiny_corpus, run_dir, "sft", tmp_path / "unmapped"))
    assert not run_dir.exists()  # refused before the run directory was made
