"""Audio reading: soundfile for I/O, torchaudio for resampling; every failure names the file.

``torchaudio.load`` needs FFmpeg/torchcodec, which is not a dependency here; soundfile (libsndfile)
reads WAV, FLAC, OGG/Vorbis/Opus and MP3. torchaudio is imported in one place, :func:`resample` (through
:func:`torchaudio_functional`), so a torch/torchaudio pair built for different CUDA versions is reported in one line
(:class:`DependencyError`) the first time audio needs resampling, and nothing else depends on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

TARGET_SR = 16_000

# The pair requirements.lock installs (a test keeps the two in step). torchaudio 2.11 is its last release: it loads
# only beside a torch built for the same CUDA version (torch 2.15 wheels use CUDA 13.2, torchaudio 2.11 CUDA 13.0).
LOCKED_TORCH, LOCKED_TORCHAUDIO = "2.14.1", "2.11.0"


class DependencyError(RuntimeError):
    """An installed package that cannot be used; the message names the packages, their versions and the fix."""


def torchaudio_functional():
    """``torchaudio.functional``, or a one-line :class:`DependencyError` naming the torch/torchaudio pair found and
    the pair to install (torchaudio raises from deep inside its extension loader when the CUDA builds differ)."""
    try:
        import torchaudio.functional as AF
    except (ImportError, OSError, RuntimeError) as err:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = f"torchaudio {version('torchaudio')}"
        except PackageNotFoundError:
            found = "no torchaudio"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = ". ".join(first.split(". ")[:2]).rstrip(".")  # torchaudio's first two sentences name the CUDA versions
        raise DependencyError(
            f"torchaudio cannot be loaded: found torch {torch.__version__} with {found} ({reason}); install the "
            f"locked pair torch=={LOCKED_TORCH} torchaudio=={LOCKED_TORCHAUDIO} (`make install` does) or a torchaudio "
            f"built for the same CUDA version as your torch"
        ) from None
    return AF


class AudioError(RuntimeError):
    """An audio file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    num_frames: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.sample_rate


def wav_header_frames(path: str | Path) -> int | None:
    """The frame count a RIFF/WAVE header declares (its ``data`` chunk size / block align), or None for other formats
    and streamed WAVs of unknown length. libsndfile reports the frames actually present, so a truncated file would
    otherwise pass as a shorter, complete one."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size)
                    block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
                    f.seek(size % 2, 1)
                elif cid == b"data":
                    if not block_align or size == 0 or size >= 0xFFFFFFF0:  # streamed: length unknown
                        return None
                    return size // block_align
                else:
                    f.seek(size + size % 2, 1)
    except OSError:
        return None


def audio_info(path: str | Path) -> AudioInfo:
    """Header information, without decoding the samples; a WAV whose header declares more frames than the file holds
    (truncated: a copy cut short, a full disk) is an :class:`AudioError` naming both counts."""
    p = Path(path)
    if not p.is_file():
        raise AudioError(_not_a_file(p))
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"unreadable audio file {p}: {err}") from err
    declared = wav_header_frames(p) if p.suffix.lower() in (".wav", ".wave") else None
    if declared is not None and info.frames < declared:
        raise AudioError(f"truncated audio file {p}: its header declares {declared} frames, it holds {info.frames}")
    return AudioInfo(str(p), int(info.samplerate), int(info.channels), int(info.frames))


def _not_a_file(p: Path) -> str:
    """Why ``p`` is no audio file: missing, a directory, a symlink loop or dangling link, a device or pipe."""
    import stat

    if p.is_symlink():
        try:
            p.resolve(strict=True)
        except RuntimeError:
            return f"audio path {p} is a symbolic link loop"
        except OSError:
            return f"audio file not found: {p} (a dangling symbolic link to {os.readlink(p)})"
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return f"audio file not found: {p}"
    except OSError as err:  # ELOOP, EACCES on a parent, ...
        return f"audio path {p} cannot be read ({err.strerror})"
    if stat.S_ISDIR(mode):
        return f"audio path {p} is a directory, not a file"
    return f"audio path {p} is not a regular file (a device, pipe or socket)"


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = TARGET_SR) -> np.ndarray:
    """Band-limited sinc resampling (torchaudio), float32 in and out."""
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    from common.training.precision import without_autocast

    t = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    with without_autocast():  # audio read inside an autocast region (a decoding loop) stays float32
        return torchaudio_functional().resample(t, orig_sr, target_sr).numpy()


def load_audio(
    path: str | Path,
    target_sr: int = TARGET_SR,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Read ``path`` (optionally a segment), downmix to mono and resample to ``target_sr``.

    Returns a float32 array in [-1, 1]. Raises :class:`AudioError` naming the file when it is missing,
    unreadable, empty (or the segment is empty) or contains NaN/Inf.
    """
    info = audio_info(path)
    start = int(round(offset * info.sample_rate))
    stop = None if duration is None else start + int(round(duration * info.sample_rate))
    if start > info.num_frames:
        raise AudioError(f"segment offset {offset:.3f}s is past the end ({info.duration:.3f}s) of {path}")
    try:
        data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"unreadable audio file {path}: {err}") from err
    if data.size == 0:
        raise AudioError(f"empty audio in {path}")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {path} contains NaN or Inf samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(mono, sr, target_sr)


def decode_check(
    path: str | Path, offset: float = 0.0, duration: float | None = None, block_seconds: float = 60.0
) -> None:
    """Decode ``path`` (or a segment) completely, ``block_seconds`` at a time, without keeping it: an
    :class:`AudioError` names the file when the data cannot be decoded, is shorter than its header says, or holds
    NaN/Inf. Memory stays at one block whatever the header declares."""
    info = audio_info(path)
    start = int(round(offset * info.sample_rate))
    stop = (
        info.num_frames if duration is None else min(info.num_frames, start + int(round(duration * info.sample_rate)))
    )
    block = max(1, int(block_seconds * info.sample_rate))
    try:
        with sf.SoundFile(str(path)) as f:
            f.seek(start)
            pos = start
            while pos < stop:
                data = f.read(min(block, stop - pos), dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    raise AudioError(
                        f"audio file {path} ends at {pos / info.sample_rate:.1f} s, before its header's end"
                    )
                if not np.isfinite(data).all():
                    raise AudioError(
                        f"audio file {path} contains NaN or Inf samples (near {pos / info.sample_rate:.1f} s)"
                    )
                pos += data.shape[0]
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"unreadable audio file {path}: {err}") from err


def as_numpy(audios) -> list[np.ndarray]:
    """Waveforms as float32 numpy arrays (a DataLoader converts numpy arrays in a batch to tensors)."""
    return [
        a.detach().cpu().numpy().astype(np.float32, copy=False)
        if isinstance(a, torch.Tensor)
        else np.asarray(a, dtype=np.float32)
        for a in audios
    ]


def write_flac(path: str | Path, wave: np.ndarray, sample_rate: int = TARGET_SR) -> None:
    """Write 16-bit FLAC atomically (:func:`common.io.atomic_open`)."""
    from common.io import atomic_open

    with atomic_open(Path(path), suffix=".flac") as f:
        sf.write(f, np.clip(wave, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
