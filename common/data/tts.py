"""Text-to-speech with libespeak-ng (shipped by the PyPI package ``espeakng-loader``) through ctypes.

The library keeps global state, so one :class:`Espeak` per process is used (``Espeak.get()``);
calls are serialised by a lock. Output is 16-bit PCM at the engine's rate (22.05 kHz), returned as
float32 in [-1, 1].
"""

from __future__ import annotations

import ctypes
import threading
from typing import ClassVar

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
espeakCHARS_UTF8 = 1
POS_CHARACTER = 1
espeakRATE, espeakVOLUME, espeakPITCH, espeakRANGE = 1, 2, 3, 4
EE_OK = 0

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class TTSError(RuntimeError):
    pass


class Espeak:
    _instance: ClassVar[Espeak | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._libc = ctypes.CDLL(None)
        data = espeakng_loader.get_data_path().encode()
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if rate <= 0:
            raise TTSError(f"espeak_Initialize failed (returned {rate}) with data path {data.decode()}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []

        def _cb(wav, numsamples, events):  # noqa: ANN001 - ctypes signature
            if numsamples > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
            return 0

        self._cb = _SynthCallback(_cb)  # keep a reference: the library holds only the pointer
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]

    @classmethod
    def get(cls) -> Espeak:
        with cls._lock:
            if cls._instance is None:
                cls._instance = Espeak()
            return cls._instance

    def synth(self, text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50, seed: int = 0) -> np.ndarray:
        """Speak ``text`` with ``voice`` at ``rate`` words/minute and ``pitch`` (0-100).

        ``seed`` seeds the breath noise of some voice variants (espeak-ng draws it from the C library's
        ``rand()``, which other libraries in the process may also advance).
        """
        with self._lock:
            self._libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
            if hasattr(self.lib, "espeak_ng_SetRandSeed"):
                self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
            if self.lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
                raise TTSError(f"espeak-ng has no voice {voice!r}")
            self.lib.espeak_SetParameter(espeakRATE, int(rate), 0)
            self.lib.espeak_SetParameter(espeakPITCH, int(pitch), 0)
            self._chunks = []
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            err = self.lib.espeak_Synth(buf, len(buf), 0, POS_CHARACTER, 0, espeakCHARS_UTF8, None, None)
            if err != EE_OK:
                raise TTSError(f"espeak_Synth failed with code {err} for text {text[:40]!r}")
            self.lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise TTSError(f"espeak-ng produced no audio for {text[:40]!r}")
        return np.concatenate(chunks).astype(np.float32) / 32768.0
