import numpy as np
import pytest
import soundfile as sf

from common.audio import AudioError, audio_info, load_audio, resample
from common.text import detect_language, normalize, normalize_english, normalize_mandarin


def _tone(sr, seconds=0.5, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.mark.unit
@pytest.mark.parametrize("fmt, ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")])
def test_formats_resample_and_downmix(tmp_path, fmt, ext):
    p = tmp_path / f"a.{ext}"
    sf.write(p, _tone(48000, 0.5, channels=2), 48000, format=fmt)
    x = load_audio(p)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 8000) <= 2
    assert np.abs(x).max() == pytest.approx(0.5, abs=0.05)


@pytest.mark.unit
def test_segment(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, _tone(16000, 2.0), 16000)
    assert len(load_audio(p, offset=0.5, duration=1.0)) == 16000
    with pytest.raises(AudioError, match="past the end"):
        load_audio(p, offset=5.0)


@pytest.mark.unit
def test_bad_audio_names_the_file(tmp_path):
    with pytest.raises(AudioError, match="not found: .*missing.wav"):
        load_audio(tmp_path / "missing.wav")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + b"\x00garbage" * 10)
    with pytest.raises(AudioError, match="corrupt.flac"):
        load_audio(corrupt)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty audio in .*empty.wav"):
        load_audio(empty)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN.*nan.wav|nan.wav.*NaN"):
        load_audio(nan)


@pytest.mark.unit
def test_resample_identity_and_length():
    x = np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)  # same rate: the samples unchanged
    assert len(resample(x, 22050, 16000)) == 16000


@pytest.mark.unit
def test_info(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, _tone(8000, 1.0), 8000)
    info = audio_info(p)
    assert (info.sample_rate, info.channels, info.num_frames) == (8000, 1, 8000)


@pytest.mark.unit
def test_english_normaliser():
    assert normalize_english("Mr. Smith has TWENTY-five apples, hasn't he?") == "mister smith has 25 apples has not he"
    assert normalize_english("  Hello,   WORLD!! ") == "hello world"


@pytest.mark.unit
def test_mandarin_normaliser():
    assert normalize_mandarin("你好，世界！ ＡＢＣ　１２３。") == "你好世界abc123"
    assert normalize("今天 天气 很好。", "zh") == "今天天气很好"


@pytest.mark.unit
def test_language_detection():
    assert detect_language("今天天气很好") == "zh"
    assert detect_language("the weather is nice") == "en"
    assert detect_language("我喜欢 python") == "zh"
    assert detect_language("I really like 北京") == "en"
    assert detect_language("") == "en"
