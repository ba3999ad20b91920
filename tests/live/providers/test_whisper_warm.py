"""A session's first transcript is not its process's first Whisper decode."""

from __future__ import annotations

import pytest

from config.settings import Settings
from engines.whisper import WhisperEngine
from live.providers.local.prewarm import prewarm
from live.providers.registry import ProviderContext

pytestmark = pytest.mark.slow


def test_the_prewarm_decodes_once_on_the_window_sessions_use(local_settings: Settings) -> None:
    """CTranslate2's first run in a process is the slow one (0.19 to 0.21 s against 0.11 to
    0.14 s after it, bench/results/whisper-warm.md); without a warm-up it fell on the
    caller's first question. The warm-up decodes on the session's short window and never
    retries on the full one (a second of noise would: that costs a second of CPU)."""
    ctx = ProviderContext(settings=local_settings)
    prewarm(ctx)
    engine = ctx.shared["local.stt.tiny.en"]
    assert isinstance(engine, WhisperEngine)
    warm = ctx.shared["local.stt.tiny.en.warm"]
    assert warm.window_seconds == local_settings.stt.window_seconds
    assert engine.encoded_frames == int(local_settings.stt.window_seconds * 100)
    assert engine.full_window_retries == 0
