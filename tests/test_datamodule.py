import json

import numpy as np
import pytest
import soundfile as sf
import torch

from common.audio import AudioError
from common.data.collate import WhisperCollator
from common.data.datamodule import AsrDataset, AudioDataModule, DataConfig
from common.data.manifests import load_manifest


def _collate(audios, texts, langs):
    n = max(len(a) for a in audios)
    return {"audio": torch.stack([torch.nn.functional.pad(torch.from_numpy(a), (0, n - len(a))) for a in audios])}


def test_bucketing_batches_and_durations(tiny_corpus):
    cfg = DataConfig(
        train=[str(tiny_corpus / "en_train" / "manifest.jsonl")],
        dev=[str(tiny_corpus / "en_dev")],
        batch_seconds=20.0,
        num_buckets=4,
        seed=3,
    )
    dm = AudioDataModule(cfg, _collate)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    seen = [i for b in batches for i in b["ids"]]
    assert sorted(seen) == sorted(c.id for c in dm.train_cuts)  # one epoch = every utterance once
    for b in batches:
        assert sum(b["durations"]) <= 20.0 + 1e-6
        assert b["audio"].shape[0] == len(b["ids"])
    assert dm.dev_names == ["en_dev"] and len(dm.val_dataloader()) == 1


def test_sampler_state_resumes_mid_epoch(tiny_corpus):
    cfg = DataConfig(
        train=[str(tiny_corpus / "en_train" / "manifest.jsonl")], batch_seconds=15.0, num_buckets=3, seed=1
    )
    full = AudioDataModule(cfg, _collate)
    full.setup()
    ref = [b["ids"] for b in full.train_dataloader()]
    dm = AudioDataModule(cfg, _collate)
    dm.setup()
    it = iter(dm.train_dataloader())
    first = [next(it)["ids"] for _ in range(3)]
    state = dm.state_dict()
    dm2 = AudioDataModule(cfg, _collate)
    dm2.setup()
    dm2.load_state_dict(state)
    rest = [b["ids"] for b in dm2.train_dataloader()]
    assert first + rest == ref


def test_skip_policy_at_load_time(tmp_path):
    good = tmp_path / "g.wav"
    sf.write(good, np.zeros(8000, dtype=np.float32) + 0.01, 16000)
    m = tmp_path / "s" / "manifest.jsonl"
    m.parent.mkdir()
    m.write_text(json.dumps({"audio_filepath": str(good), "text": "ok"}) + "\n")
    cuts, _ = load_manifest(m)
    good.write_bytes(b"not audio any more")  # corrupted after validation
    with pytest.raises(AudioError, match="g.wav"):
        AsrDataset(_collate, "error")[cuts]
    batch = AsrDataset(_collate, "skip")[cuts]
    assert batch["ids"] == [] and batch["skipped"][0][0] == cuts[0].id


def test_whisper_collator_labels(whisper_tiny):
    _, proc = whisper_tiny
    b = WhisperCollator(proc)([np.zeros(16000, np.float32)] * 2, ["hello world", "a longer sentence"], ["en", "en"])
    tok = proc.tokenizer
    dec, lab = b["decoder_input_ids"], b["labels"]
    assert dec[0, :2].tolist() == tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    # labels are the decoder inputs shifted left, prefix masked, ending with <|endoftext|>
    assert lab[1, 0] == -100 and lab[1, 1:-1].tolist() == dec[1, 2:].tolist()
    assert lab[1, -1].item() == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.decode([t for t in lab[0].tolist() if t >= 0], skip_special_tokens=True) == " hello world"
