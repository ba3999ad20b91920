"""The default session cap: what bench.load measured for the profile, scaled to the machine."""

from __future__ import annotations

import pytest

from config.capacity import MEASURED, default_cap, profile_of
from config.settings import load_settings

pytestmark = pytest.mark.unit

HOSTED_KEYS = {"api_key": "k" * 16}


def test_the_profile_follows_the_slow_part() -> None:
    assert profile_of("local", "local", "local", "local") == "local"
    assert profile_of("assemblyai", "local", "cartesia", "none") == "local"  # one local model
    assert profile_of("assemblyai", "openai", "cartesia", "local") == "hosted-speech-local-face"
    assert profile_of("assemblyai", "openai", "cartesia", "tavus") == "hosted"
    assert profile_of("assemblyai", "openai", "cartesia", "none") == "hosted"


def test_the_cap_scales_with_cores_and_stops_at_memory() -> None:
    m = MEASURED["hosted"]
    two = default_cap("assemblyai", "openai", "cartesia", "tavus", cores=m.cores, mib=1e9)
    assert two.sessions == m.sessions
    eight = default_cap("assemblyai", "openai", "cartesia", "tavus", cores=4 * m.cores, mib=1e9)
    assert eight.sessions == 4 * m.sessions
    tight = default_cap("assemblyai", "openai", "cartesia", "tavus", cores=8, mib=400 + 3.5 * m.mib_per_session)
    assert tight.sessions == 3 and "MiB available -> 3" in tight.why
    half = default_cap("local", "local", "local", "local", cores=0.5, mib=1e9)
    assert half.sessions == 1  # never below one: a worker that takes nothing helps nobody


def test_settings_take_the_measured_cap_unless_one_is_set() -> None:
    auto = load_settings(_env_file=None, stt={"provider": "assemblyai", **HOSTED_KEYS},
                         llm={"provider": "openai", **HOSTED_KEYS},
                         tts={"provider": "cartesia", **HOSTED_KEYS}, avatar={"provider": "none"})
    expected = default_cap("assemblyai", "openai", "cartesia", "none")
    assert auto.limits.max_concurrent_sessions == expected.sessions >= 1
    assert auto.session_cap_reason.startswith("hosted profile")
    fixed = load_settings(_env_file=None, limits={"max_concurrent_sessions": 3})
    assert fixed.limits.max_concurrent_sessions == 3
    assert "LIMITS__MAX_CONCURRENT_SESSIONS" in fixed.session_cap_reason
