"""espeak-ng through ctypes: the robotic fallback voice, and the lock Piper shares with it."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

import numpy as np

from engines import EngineError
from engines.executors import SerialExecutor
from engines.store import ModelStore

# Piper phonemizes through the espeak-ng library it embeds; the espeak TTS may drive the same
# library (same global state), so both take this lock around espeak calls.
ESPEAK_LOCK = threading.Lock()


# espeak-ng C API (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _espeak_library() -> tuple[ctypes.CDLL, str | None]:
    """Piper's bundled espeak-ng (no Debian package needed), else the system libespeak-ng."""
    try:
        from piper import espeakbridge
        from piper.phonemize_espeak import ESPEAK_DATA_DIR

        return ctypes.CDLL(espeakbridge.__file__), str(ESPEAK_DATA_DIR)
    except (ImportError, OSError):
        pass
    name = ctypes.util.find_library("espeak-ng")
    if name is None:
        raise EngineError(
            'the espeak TTS needs espeak-ng: pip install -e ".[local]" (piper-tts bundles it) '
            "or apt-get install espeak-ng"
        )
    return ctypes.CDLL(name), None


class EspeakEngine:
    """espeak-ng through ctypes: tiny, fast, robotic; the fallback voice."""

    def __init__(self) -> None:
        lib, data_dir = _espeak_library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib = lib
        self._buf: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._on_audio)  # keep a reference: C holds it
        with ESPEAK_LOCK:
            rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir.encode() if data_dir else None, 0
            )
        if rate <= 0:
            raise EngineError("espeak-ng failed to initialise")
        self.sample_rate = int(rate)
        self.executor = SerialExecutor("espeak")

    def _on_audio(self, wav: Any, num_samples: int, events: Any) -> int:
        if num_samples > 0 and wav:
            self._buf.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synthesize_sync(self, text: str, *, voice: str, words_per_minute: int) -> bytes:
        data = text.encode("utf-8")
        with ESPEAK_LOCK:
            self._buf = []
            # Piper may have re-initialised the shared library: set everything every time
            self._lib.espeak_SetSynthCallback(self._callback)
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise EngineError(f"espeak-ng has no voice {voice!r}")
            self._lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
            rc = self._lib.espeak_Synth(
                ctypes.c_char_p(data), len(data) + 1, 0, _POS_CHARACTER, 0,
                _ESPEAK_CHARS_UTF8, None, None,
            )  # fmt: skip
            if rc != 0:
                raise RuntimeError(f"espeak_Synth failed with code {rc}")
            pcm = np.concatenate(self._buf) if self._buf else np.zeros(0, dtype=np.int16)
            self._buf = []
        return pcm.astype(np.int16).tobytes()


def get_espeak(store: ModelStore) -> EspeakEngine:
    return store.cached("local.tts.espeak", EspeakEngine)
