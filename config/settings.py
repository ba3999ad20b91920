"""The one configuration of the service.

Every process (web, Celery worker, beat, live worker, CLI) builds a :class:`Settings` once with
:func:`load_settings` and passes it down. Groups are plain nested models so that one `.env`
feeds all of them (pydantic-settings #279); nested variables use ``__``
(``STT__PROVIDER=assemblyai``) and the well-known platform names (``LIVEKIT_URL``,
``DATABASE_URL``, ``REDIS_URL``, ``OPENAI_API_KEY`` ...) are accepted too.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from config import catalog
from config.capacity import default_cap
from config.catalog import AvatarName, LLMName, STTName, TTSName

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VAR_DIR = PROJECT_ROOT / "var"

# The slots' provider names come from the catalogue (config/catalog.py).
STTProvider = STTName
LLMProvider = LLMName
TTSProvider = TTSName
AvatarProvider = AvatarName
ENDPOINT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class ConfigError(Exception):
    """Start-up must stop: one line per problem, naming the variable and what is expected."""


class LiveKitSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="LiveKit server URL (ws:// or wss://). Empty: start the embedded dev server.",
    )
    public_url: str | None = Field(
        default=None,
        description="URL browsers use to reach LiveKit, when it differs from `url`.",
    )
    api_key: SecretStr = Field(default=SecretStr("devkey"), description="LiveKit API key.")
    api_secret: SecretStr = Field(
        default=SecretStr("embedded-dev-secret-change-me-0123456789"),
        description="LiveKit API secret (livekit-server requires 32 characters or more).",
    )
    agent_name: str = Field(
        default="avatar-agent",
        min_length=1,
        description="Name the live worker registers under; dispatches target it.",
    )
    port: int = Field(default=7880, ge=1, le=65535, description="Embedded server signaling port.")
    rtc_tcp_port: int = Field(default=7881, ge=1, le=65535, description="Embedded RTC TCP port.")
    rtc_udp_port: int = Field(default=7882, ge=1, le=65535, description="Embedded RTC UDP port.")
    node_ip: str = Field(
        default="127.0.0.1",
        description="Address the embedded server advertises in ICE candidates.",
    )
    token_ttl_seconds: int = Field(
        default=900, ge=30, le=86400, description="Lifetime of participant tokens."
    )
    webhook_rules_prefix: str = Field(
        default="",
        description="Rooms whose name starts with this prefix get an agent when LiveKit reports "
        "them started (webhook). Empty: only rooms whose metadata asks for one.",
    )

    @field_validator("url", "public_url")
    @classmethod
    def _ws_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError("expected a ws://, wss://, http:// or https:// URL")
        return v.rstrip("/")

    @property
    def embedded(self) -> bool:
        return self.url is None

    @property
    def effective_url(self) -> str:
        return self.url or f"ws://127.0.0.1:{self.port}"

    @property
    def browser_url(self) -> str:
        return self.public_url or self.effective_url

    @property
    def http_url(self) -> str:
        u = self.effective_url
        return "http" + u[2:] if u.startswith("ws") else u


def _no_fallback(value: object) -> object:
    """``*__FALLBACK=none`` (or empty) in the environment: no fallback provider."""
    if isinstance(value, str) and value.strip().lower() in ("", "none"):
        return None
    return value


class STTSettings(BaseModel):
    provider: STTProvider = Field(
        default="local", description=f"Speech-to-text provider: {catalog.describe('stt')}."
    )
    api_key: SecretStr | None = Field(default=None, description="Key for a hosted STT.")
    model: str = Field(
        default="tiny.en",
        description="Model: local `tiny.en` | `base`; AssemblyAI `universal-streaming`.",
    )
    language: str = Field(default="en", description="Spoken language (BCP-47 or ISO 639-1).")
    base_url: str | None = Field(default=None, description="Override the provider's API URL.")
    fallback: STTProvider | None = Field(
        default="local", description="Provider used when the hosted one fails (`none`: no fallback)."
    )

    _fallback_none = field_validator("fallback", mode="before")(_no_fallback)
    window_seconds: float = Field(
        default=10.0,
        ge=5.0,
        le=30.0,
        description=(
            "Local Whisper: utterances that fit this window are encoded on it instead of "
            "Whisper's 30 s (about 3x faster for short turns; 30 turns it off)."
        ),
    )
    interim_seconds: float = Field(
        default=3.0,
        ge=0.0,
        le=10.0,
        description=(
            "Local Whisper: an interim transcript every N seconds of speech while the model "
            "is idle (0 turns interims off). An interim still decoding when the caller stops "
            "holds up the final: at 1 s, 32 of 79 speculative transcripts waited over 0.1 s "
            "for one (bench/results/turns-call-int-*.md); at 3 s, short questions get none."
        ),
    )
    speculate_after: float = Field(
        default=0.05,
        ge=0.05,
        le=0.5,
        description=(
            "Local Whisper: seconds of quiet after which the utterance so far is transcribed "
            "and sent as LiveKit's preflight transcript (the reply starts on it); dropped if "
            "the caller goes on."
        ),
    )
    retry_unlikely: bool = Field(
        default=False,
        description=(
            "Local Whisper: decode a short-window transcript of low log-probability again on "
            "the full 30 s window (about 0.7 s more per such turn). Through Opus on the "
            "turn-taking corpus the retry left those transcripts as wrong as it found them "
            "(bench/results/turns-stt-doubt.md), so it is off."
        ),
    )
    gain_control: bool = Field(
        default=True,
        description=(
            "LiveKit's automatic gain control on the caller's audio before the VAD and the "
            "STT (LiveKit's default). Off saved 0.3 to 0.9% of a core per hosted session (of "
            "about 21%); on callers at -26 to -50 dBFS neither Silero's speech detection nor "
            "Whisper's error rate moved beyond the noise either way "
            "(bench/results/gain-control.md, load-limits.md)."
        ),
    )
    frame_ms: int = Field(
        default=50,
        ge=10,
        le=100,
        multiple_of=10,
        description=(
            "Milliseconds of the caller's audio per frame handed to the VAD and the STT "
            "(LiveKit's room input; 50 is LiveKit's default). The VAD hears the end of speech "
            "only once the frame holding it is complete: 20 ms frames began the speculative "
            "transcript 0.02 s sooner offline (bench.turns.vad_lag --frames 20,50) and 0.014 s "
            "sooner in the room, but the heard latency did not move beyond the noise in two "
            "A/B pairs (bench/results/turns-call-frame*.md), so LiveKit's 50 stays."
        ),
    )


class LLMSettings(BaseModel):
    provider: LLMProvider = Field(
        default="local", description=f"Language model provider: {catalog.describe('llm')}."
    )
    api_key: SecretStr | None = Field(default=None, description="Key for a hosted LLM.")
    model: str = Field(
        default="smollm2-135m",
        description="Model name: local `smollm2-135m`; OpenAI e.g. `gpt-4o-mini`.",
    )
    base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL (llama.cpp server, Ollama, vLLM)."
    )
    temperature: float = Field(default=0.6, ge=0.0, le=2.0, description="Sampling temperature.")
    max_tokens: int = Field(default=96, ge=1, le=8192, description="Max tokens per answer.")
    threads: int = Field(
        default=1, ge=1, le=64,
        description="CPU threads of the local model (llama.cpp) in the live worker. One by "
        "default: its threads wait on each other at every step, and on a machine whose cores "
        "are busy (the face, the VAD, Whisper, other sessions) one descheduled thread stalls "
        "the rest (bench/results/llm-threads.md). More only on a machine with cores to spare.",
    )
    weights: Literal["q4_1", "q8_0", "q4_0"] = Field(
        default="q8_0",
        description="Quantization of the local model in the live worker: `q4_1` as shipped, or "
        "`q8_0` / `q4_0` made from it once into the model cache (about 10 s, at `avatar setup`; "
        "`AVATAR_MODEL_CACHE`, default ~/.cache/avatar-agent-service). llama.cpp reads a prompt "
        "faster from both (first token 0.14 s and 0.09 s against 0.22 s on one idle thread); "
        "`q8_0` answers as well as the shipped file, `q4_0` worse (persona eval 79% against 86%) "
        "(bench/results/llm-weights.md, brain-weights-*-s4.md).",
    )
    fallback: LLMProvider | None = Field(
        default="local", description="Provider used when the hosted one fails (`none`: no fallback)."
    )

    _fallback_none = field_validator("fallback", mode="before")(_no_fallback)
    endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Named OpenAI-compatible base URLs a session spec may pick with "
        "`llm.endpoint` (the configured key is sent to them), e.g. "
        "{\"ollama\": \"http://127.0.0.1:11434/v1\"}. Sessions cannot name a URL themselves.",
    )

    @field_validator("endpoints")
    @classmethod
    def _endpoint_urls(cls, v: dict[str, str]) -> dict[str, str]:
        for name, url in v.items():
            if not ENDPOINT_NAME_RE.match(name):
                raise ValueError(f"endpoint name {name!r}: use letters, digits, '.', '_' or '-'")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {name!r}: expected an http:// or https:// URL")
        return {name: url.rstrip("/") for name, url in v.items()}


class TTSSettings(BaseModel):
    provider: TTSProvider = Field(
        default="local", description=f"Text-to-speech provider: {catalog.describe('tts')}."
    )
    api_key: SecretStr | None = Field(default=None, description="Key for a hosted TTS.")
    voice: str = Field(
        default="joe-us", description="Voice: local `joe-us`; Cartesia voice id."
    )
    model: str = Field(default="", description="Hosted TTS model (Cartesia `sonic-2`).")
    base_url: str | None = Field(default=None, description="Override the provider's API URL.")
    fallback: TTSProvider | None = Field(
        default="local", description="Provider used when the hosted one fails (`none`: no fallback)."
    )

    _fallback_none = field_validator("fallback", mode="before")(_no_fallback)


class AvatarSettings(BaseModel):
    provider: AvatarProvider = Field(
        default="local", description=f"Talking-face provider: {catalog.describe('avatar')}."
    )
    api_key: SecretStr | None = Field(default=None, description="Key for a hosted avatar.")
    avatar_id: str = Field(
        default="", description="The hosted avatar's id at its vendor (for Tavus, the face id); "
        "local: portrait pack path."
    )
    replica_id: str = Field(default="", description="Tavus persona (pal) id.")
    base_url: str | None = Field(default=None, description="Override the provider's API URL.")
    fallback: AvatarProvider = Field(
        default="local", description="Used when the chosen avatar fails: local or none."
    )
    width: int = Field(default=512, ge=64, le=1920, description="Local avatar video width.")
    height: int = Field(default=512, ge=64, le=1920, description="Local avatar video height.")
    fps: int = Field(default=25, ge=5, le=60, description="Local avatar frames per second.")
    mouth_lead_ms: int = Field(
        default=0, ge=-200, le=300,
        description="Local avatar: how much earlier than its sound each frame is sent (ms, "
        "negative: later); raise it if viewers see the lips late, lower it if too early.",
    )
    local_mode: Literal["in-process", "participant"] = Field(
        default="in-process",
        description="Local avatar: rendered in the agent's process, or as its own participant "
        "(the way hosted avatars join).",
    )


class BrokerSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="Celery broker (redis://). Empty: start the embedded Valkey server.",
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend; defaults to the broker URL."
    )
    port: int = Field(default=6390, ge=1, le=65535, description="Embedded Valkey port.")
    visibility_timeout_seconds: int = Field(
        default=900,
        ge=1,
        le=86_400,
        description="Seconds after which a task taken by a worker that vanished (killed "
        "outright) is handed to another worker. Keep it above the longest task time limit "
        "(300 s), or a task still running is started a second time.",
    )

    @field_validator("url", "result_backend")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith(("redis://", "rediss://", "unix://", "memory://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return v

    @property
    def embedded(self) -> bool:
        return self.url is None

    @property
    def effective_url(self) -> str:
        return self.url or f"redis://127.0.0.1:{self.port}/0"

    @property
    def effective_backend(self) -> str:
        return self.result_backend or self.effective_url


class DatabaseSettings(BaseModel):
    url: str = Field(
        default_factory=lambda: f"sqlite:///{DEFAULT_VAR_DIR / 'avatar.db'}",
        description="SQLAlchemy URL: SQLite by default, postgresql:// in deployment.",
    )
    echo: bool = Field(default=False, description="Log SQL statements.")

    @field_validator("url")
    @classmethod
    def _db_url(cls, v: str) -> str:
        if v.startswith("postgres://"):  # Heroku's spelling; SQLAlchemy rejects it
            v = "postgresql+psycopg://" + v[len("postgres://") :]
        elif v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v[len("postgresql://") :]
        if not v.startswith(("sqlite", "postgresql")):
            raise ValueError("expected a sqlite:/// or postgresql:// URL")
        return v


class WebSettings(BaseModel):
    secret_key: SecretStr = Field(
        default=SecretStr("dev-insecure-secret-key-change-me"),
        description="Flask session signing key. Set a long random value in deployment.",
    )
    host: str = Field(default="127.0.0.1", description="Address `avatar up` binds the UI to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Admin UI / API port.")
    public_url: str | None = Field(
        default=None, description="Public base URL of the web process (webhooks, links)."
    )
    admin_email: str | None = Field(
        default=None, description="First admin, created at start-up if no admin exists."
    )
    admin_password: SecretStr | None = Field(
        default=None, description="Password of the bootstrap admin."
    )
    secure_cookies: bool | None = Field(
        default=None,
        description="Mark cookies Secure and send HSTS (HTTPS only). Empty: on, unless every "
        "service is on loopback (the embedded local stack).",
    )
    trusted_proxies: int = Field(
        default=0, ge=0, le=5,
        description="Reverse proxies in front of the web process whose X-Forwarded-For/-Proto "
        "are trusted (0: use the socket's address; Heroku's router: 1).",
    )
    login_rate_limit: str = Field(
        default="10 per minute",
        description="Login attempts allowed per client address and, separately, per account.",
    )
    session_rate_limit: str = Field(
        default="30 per minute;500 per day",
        description="Sessions one API token may start: a rate and a daily quota, counted in "
        "the broker so every web process shares them.",
    )
    flower_port: int = Field(default=5555, ge=1, le=65535, description="Flower port.")
    flower_user: str = Field(default="admin", description="Flower basic-auth user.")
    flower_password: SecretStr = Field(
        default=SecretStr("change-me"), description="Flower basic-auth password."
    )

    @field_validator("login_rate_limit", "session_rate_limit")
    @classmethod
    def _rate(cls, v: str) -> str:
        from limits import parse_many

        try:
            parse_many(v)
        except ValueError:
            raise ValueError("expected a rate such as '10 per minute' (several: ';')") from None
        return v

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class LimitsSettings(BaseModel):
    max_concurrent_sessions: int = Field(
        default=2, ge=1, le=1000,
        description=(
            "Hard cap of sessions per live worker. Unset: what bench.load measured for the "
            "providers' profile, scaled to this machine's cores and memory (config/capacity.py)."
        ),
    )
    job_executor: Literal["process", "thread"] = Field(
        default="process",
        description=(
            "How the live worker runs each session: 'process' (LiveKit's default on Linux: a "
            "process per session, with its own copy of the models and the WebRTC stack; a "
            "crash ends one session) or 'thread' (every session in the worker's process, "
            "sharing the models; measured side by side in bench/results/load-*.md)."
        ),
    )
    preload_fallbacks: bool = Field(
        default=False,
        description=(
            "Load the local fallback models (behind a hosted STT, LLM or TTS) in every job "
            "process at start, instead of when a hosted provider first fails (then about 0.5 "
            "to 2 s more in that turn, README 'Fallbacks'); costs about 280 MiB per process."
        ),
    )
    max_session_minutes: float = Field(
        default=30.0, gt=0, description="A session ends after this many minutes."
    )
    idle_timeout_seconds: float = Field(
        default=120.0, gt=0, description="A session ends after this long with nobody speaking."
    )
    caller_grace_seconds: float = Field(
        default=5.0, ge=0, description="How long the agent stays after the caller leaves."
    )
    turn_detector: Literal["vad", "transcript", "lm", "v1-mini", "smart-turn"] = Field(
        default="lm",
        description=(
            "End of turn: 'vad' (silence of ENDPOINTING_MIN_DELAY), 'transcript' (a turn whose "
            "transcript trails off waits ENDPOINTING_MAX_DELAY), 'lm' (the same when the local "
            "SmolLM2 finds the words unlikely to end there, below TURN_LM_THRESHOLD), 'v1-mini' "
            "(LiveKit's local audio model) or 'smart-turn' (pipecat's Smart Turn v3). Chosen by "
            "bench.turns."
        ),
    )
    turn_lm_threshold: float = Field(
        default=0.001, gt=0, lt=1,
        description=(
            "With TURN_DETECTOR=lm: below this P(end of turn) the turn waits "
            "ENDPOINTING_MAX_DELAY instead of ENDPOINTING_MIN_DELAY."
        ),
    )
    turn_sure_threshold: float = Field(
        default=0.1, gt=0, le=1,
        description=(
            "With TURN_DETECTOR=lm and the local STT: at or above this P(end of turn) the turn "
            "ends after ENDPOINTING_SURE_DELAY instead of ENDPOINTING_MIN_DELAY ('What time is "
            "it' scores 0.07, 'My name is Daniel Fischer' 0.46). 1 turns it off. Chosen by "
            "bench.turns.endpoint."
        ),
    )
    endpointing_sure_delay: float = Field(
        default=0.7, ge=0,
        description=(
            "Silence after which a turn ends when the model is sure it ends there (above; "
            "seconds). At most ENDPOINTING_MIN_DELAY."
        ),
    )
    turn_unsure_confidence: float = Field(
        default=0.7, ge=0, le=1,
        description=(
            "With TURN_DETECTOR=lm and the local STT: a transcript Whisper is less sure of than "
            "this (exp of its mean log-probability) waits ENDPOINTING_UNSURE_DELAY, not "
            "ENDPOINTING_MAX_DELAY, when the model finds it goes on: misheard words ('Can you "
            "bear me') read as unfinished. 0 turns it off. Chosen by bench.turns.endpoint."
        ),
    )
    endpointing_unsure_delay: float = Field(
        default=1.05, ge=0,
        description=(
            "Silence after which a turn ends when its transcript is unsure (above; seconds): "
            "longer than the corpus's longest hesitation (0.9 s) as the room hears it (+0.15 s). "
            "Kept between ENDPOINTING_MIN_DELAY and ENDPOINTING_MAX_DELAY."
        ),
    )
    endpointing_min_delay: float = Field(
        default=0.8, ge=0, description="Silence before a turn may end (seconds)."
    )
    endpointing_max_delay: float = Field(
        default=1.3,
        ge=0,
        description="Silence after which a turn always ends, when the detector says it goes on (seconds).",
    )
    preemptive_tts: bool = Field(
        default=True,
        description=(
            "Start the reply's LLM and first TTS sentence on the caller's speculative transcript, "
            "while the end of the turn is still being confirmed; dropped if the caller goes on."
        ),
    )
    interruption_min_words: int = Field(
        default=1,
        ge=0,
        le=10,
        description=(
            "Where the agent's audio cannot pause (hosted avatars): words the caller must have "
            "said over the agent before it stops (0: any sound stops it). With the local STT, "
            "a backchannel alone ('mm-hm', 'okay') has none."
        ),
    )
    interruption_min_speech: float = Field(
        default=0.12, ge=0.05, le=5.0,
        description=(
            "Seconds of caller speech over the agent that pause it (or, where it cannot "
            "pause, stop it once the words above are heard). 0.12 s against 0.2 s, two room "
            "A/B pairs: the avatar went quiet 0.08 s sooner (p95 0.45 s against 0.51 to 0.55 s)."
        ),
    )
    interruption_pause: bool = Field(
        default=True,
        description=(
            "Pause the agent the moment the caller speaks over it, and resume if no words "
            "follow (a backchannel, a cough), where its audio can pause (the local avatar "
            "in-process, or no avatar); elsewhere it stops once the caller's words are heard."
        ),
    )
    false_interruption_timeout: float = Field(
        default=0.2, ge=0.05, le=5.0,
        description=(
            "Seconds after a pausing sound ends before the agent resumes, if no words were "
            "heard (with the local STT the resume also waits for its transcript)."
        ),
    )
    vad_min_silence: float = Field(
        default=0.55, ge=0.25, le=2.0,
        description=(
            "Silence after which the session's VAD says the caller stopped (seconds): a reply "
            "paused for a backchannel resumes from there (after FALSE_INTERRUPTION_TIMEOUT, "
            "once no words were heard). Turn ends count from the end of speech, so this does "
            "not move them; the local STT cuts utterances with a VAD of its own (0.55 s). "
            "0.3 s was measured twice against 0.55 s and did not shorten the pause after a "
            "backchannel (bench/results/turns-call-interruptions-after.md)."
        ),
    )
    echo_guard_seconds: float = Field(
        default=3.0,
        ge=0.0,
        le=10.0,
        description=(
            "After the agent starts speaking, caller audio cannot interrupt it for this long "
            "(LiveKit's AEC warm-up: the caller's echo canceller settles; 0 turns it off)."
        ),
    )
    transcript_retention_days: int = Field(
        default=90, ge=1,
        description="Transcript lines, exports and summaries older than this are deleted by beat.",
    )

    @model_validator(mode="after")
    def _delays(self) -> LimitsSettings:
        if self.endpointing_max_delay < self.endpointing_min_delay:
            raise ValueError("endpointing_max_delay must be >= endpointing_min_delay")
        return self


class PricingSettings(BaseModel):
    """Unit prices in USD, keyed ``provider.metric``; anything missing costs 0."""

    prices: dict[str, float] = Field(
        default_factory=lambda: {**catalog.default_prices(), "livekit.room_minutes": 0.0005},
        description="USD per unit, e.g. {\"openai.llm_output_tokens\": 6e-7}.",
    )
    currency: str = Field(default="USD", description="Currency of the price table.")

    @field_validator("prices")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        for key, price in v.items():
            if "." not in key:
                raise ValueError(f"price key {key!r} must be 'provider.metric'")
            if price < 0:
                raise ValueError(f"price for {key!r} must not be negative")
        return v

    def price(self, provider: str, metric: str) -> float:
        return self.prices.get(f"{provider}.{metric}", 0.0)


class LoggingSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of every process."
    )
    json_format: bool = Field(default=False, description="Emit JSON log lines.")


# Platform and vendor names accepted as well as the nested ones (lower priority).
PLATFORM_ALIASES: dict[str, tuple[str, str]] = {
    "LIVEKIT_URL": ("livekit", "url"),
    "LIVEKIT_API_KEY": ("livekit", "api_key"),
    "LIVEKIT_API_SECRET": ("livekit", "api_secret"),
    "DATABASE_URL": ("db", "url"),
    "REDIS_URL": ("broker", "url"),
    "CELERY_BROKER_URL": ("broker", "url"),
    "CELERY_RESULT_BACKEND": ("broker", "result_backend"),
    "SECRET_KEY": ("web", "secret_key"),
    "PORT": ("web", "port"),
}
VENDOR_KEYS: dict[str, tuple[str, str]] = {
    env: (p.slot, p.name) for env, p in catalog.vendor_keys().items()
}


class PlatformEnvSource(PydanticBaseSettingsSource):
    """Maps ``LIVEKIT_URL``-style names onto the nested groups."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for env, (group, key) in PLATFORM_ALIASES.items():
            val = os.environ.get(env)
            if val:
                out.setdefault(group, {})[key] = val
        for env, (_slot, provider) in VENDOR_KEYS.items():
            val = os.environ.get(env)
            if val:
                out.setdefault("vendor_keys", {})[provider] = val
        return out


class Settings(BaseSettings):
    """Root settings; see `.env.example` for every variable."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    _cap_reason: str = PrivateAttr(default="")

    livekit: LiveKitSettings = Field(default_factory=LiveKitSettings, description="LiveKit.")
    stt: STTSettings = Field(default_factory=STTSettings, description="Speech-to-text slot.")
    llm: LLMSettings = Field(default_factory=LLMSettings, description="Language model slot.")
    tts: TTSSettings = Field(default_factory=TTSSettings, description="Text-to-speech slot.")
    avatar: AvatarSettings = Field(default_factory=AvatarSettings, description="Avatar slot.")
    broker: BrokerSettings = Field(default_factory=BrokerSettings, description="Celery broker.")
    db: DatabaseSettings = Field(default_factory=DatabaseSettings, description="Database.")
    web: WebSettings = Field(default_factory=WebSettings, description="Admin UI and API.")
    limits: LimitsSettings = Field(default_factory=LimitsSettings, description="Session limits.")
    pricing: PricingSettings = Field(default_factory=PricingSettings, description="Price table.")
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Logging.")
    var_dir: Path = Field(
        default=DEFAULT_VAR_DIR, description="Where local state lives (SQLite, logs, recordings)."
    )
    vendor_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Hosted providers' keys by provider name, read from the vendors' usual "
        "variables (TAVUS_API_KEY, ...); a slot's own API_KEY wins for its configured provider.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            PlatformEnvSource(settings_cls),
            dotenv_settings,
        ]
        cfg = os.environ.get("AVATAR_CONFIG_FILE")
        if cfg:
            path = Path(cfg)
            if not path.is_file():
                raise ConfigError(f"AVATAR_CONFIG_FILE: no such file {cfg!r}")
            if path.suffix in (".yaml", ".yml"):
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
            elif path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                raise ConfigError(f"AVATAR_CONFIG_FILE: expected a .toml or .yaml file, got {cfg!r}")
        return tuple(sources)

    @model_validator(mode="after")
    def _session_cap(self) -> Settings:
        """Unset, the session cap is the one measured for this profile, on this machine."""
        if "max_concurrent_sessions" in self.limits.model_fields_set:
            self._cap_reason = "set by LIMITS__MAX_CONCURRENT_SESSIONS"
            return self
        cap = default_cap(self.stt.provider, self.llm.provider, self.tts.provider,
                          self.avatar.provider)
        object.__setattr__(self.limits, "max_concurrent_sessions", cap.sessions)
        self._cap_reason = cap.why
        return self

    @property
    def session_cap_reason(self) -> str:
        """Where the session cap comes from (logged by the worker, shown by `avatar doctor`)."""
        return self._cap_reason

    @model_validator(mode="after")
    def _vendor_keys(self) -> Settings:
        """Fill a hosted slot's key from the vendor's usual variable (OPENAI_API_KEY, ...)."""
        for env, (slot, provider) in VENDOR_KEYS.items():
            group = getattr(self, slot)
            if group.provider == provider and group.api_key is None and os.environ.get(env):
                group.api_key = SecretStr(os.environ[env])
        return self

    def api_key_for(self, slot: str, provider: str) -> SecretStr | None:
        """The key a hosted provider is built with: the slot's own key when the slot is
        configured for that provider, else the vendor's variable. Never another vendor's key."""
        group = getattr(self, slot)
        if group.provider == provider and group.api_key is not None:
            return group.api_key  # type: ignore[no-any-return]
        return self.vendor_keys.get(provider)

    def secret_values(self) -> list[str]:
        """Every secret's plain value, so log filters and pages can mask them: the SecretStr
        fields and the passwords inside URLs (database, broker, ...), raw and decoded."""
        out: list[str] = []
        for _path, val in _walk(self.model_dump()):
            if isinstance(val, SecretStr):
                out.append(val.get_secret_value())
            elif isinstance(val, str) and "://" in val:
                out += url_passwords(val)
        return sorted({v for v in out if len(v) >= 4}, key=len, reverse=True)

    def masked(self) -> dict[str, Any]:
        """The effective configuration with secrets replaced, for pages and `avatar doctor`:
        SecretStr fields dump as "**********", and URL passwords become "***"."""
        return _mask_urls(self.model_dump(mode="json"))  # type: ignore[no-any-return]


def url_passwords(url: str) -> list[str]:
    """The password in a URL's userinfo, as written and percent-decoded."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    if not password:
        return []
    return [password, unquote(password)]


def mask_url(url: str) -> str:
    """`redis://:***@host:6379/0`: the URL without its password."""
    for password in url_passwords(url):
        url = url.replace(f":{password}@", ":***@")
    return url


def _walk(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _walk(v, (*path, str(k)))]
    if isinstance(value, list | tuple):
        return [item for v in value for item in _walk(v, path)]
    return [(path, value)]


def _mask_urls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _mask_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_urls(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def _env_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if len(parts) >= 2 and parts[0] == "pricing" and parts[1] == "prices":
        return "PRICING__PRICES"
    for env, target in PLATFORM_ALIASES.items():
        if tuple(parts[:2]) == target and os.environ.get(env):
            return env
    return "__".join(p.upper() for p in parts[:2]) if parts else "configuration"


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: the variable, what is expected; never the (maybe secret) value."""
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"config error: {_env_name(e['loc'])}: {msg}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into a :class:`ConfigError`."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


# Secrets whose default value is public (in this repository, or LiveKit's `--dev` pair).
PUBLIC_DEFAULT_SECRETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "WEB__SECRET_KEY": ("web", "secret_key", ("dev-insecure-secret-key-change-me",)),
    "LIVEKIT__API_KEY": ("livekit", "api_key", ("devkey",)),
    "LIVEKIT__API_SECRET": (
        "livekit", "api_secret", ("embedded-dev-secret-change-me-0123456789", "secret"),
    ),
    "WEB__FLOWER_PASSWORD": ("web", "flower_password", ("change-me",)),
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _loopback(url: str | None) -> bool:
    if not url:
        return True
    from urllib.parse import urlsplit

    if url.startswith(("unix://", "memory://")):
        return True
    host = urlsplit(url).hostname
    return host in LOOPBACK_HOSTS or (host or "").startswith("127.")


def is_local_only(settings: Settings) -> bool:
    """The embedded default: LiveKit, the broker, the UI and its public URL all on loopback.

    `avatar up` without LIVEKIT_URL / REDIS_URL is this, and so are the tests; anything
    reachable from another machine is a deployment.
    """
    return (
        _loopback(settings.livekit.url)
        and _loopback(settings.livekit.public_url)
        and _loopback(settings.broker.url)
        and _loopback(settings.web.public_url)
        and settings.web.host in LOOPBACK_HOSTS
    )


def public_default_secrets(settings: Settings, *, flower: bool = False) -> list[str]:
    """Variables still holding a public default (Flower's password only when Flower runs)."""
    out = []
    for env, (group, name, public) in PUBLIC_DEFAULT_SECRETS.items():
        if env == "WEB__FLOWER_PASSWORD" and not flower:
            continue
        value: SecretStr = getattr(getattr(settings, group), name)
        if value.get_secret_value() in public:
            out.append(env)
    return out


def check_deployment_secrets(settings: Settings, *, flower: bool = False) -> None:
    """:raise ConfigError: outside the embedded default, for each public default secret.

    A public Flask key lets anyone forge an admin session; a public LiveKit pair lets anyone
    mint room tokens; Flower's `change-me` opens the task monitor.
    """
    if is_local_only(settings):
        return
    names = public_default_secrets(settings, flower=flower)
    if names:
        raise ConfigError(
            "\n".join(
                f"config error: {env}: is the public default; set a long random value "
                "(only the embedded local stack may use the defaults)"
                for env in names
            )
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once (processes started from the CLI or Procfile).

    :raise ConfigError: invalid settings, or public default secrets outside the embedded
        default (see :func:`check_deployment_secrets`).
    """
    settings = load_settings()
    check_deployment_secrets(settings)
    return settings
