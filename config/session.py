"""The session contract: the per-session configuration every process shares.

Provisioning (Celery), the admin UI and the API build a :class:`SessionSpec`; LiveKit carries
it as the agent dispatch's metadata string; the live worker validates it before anything
starts. It lives in `config/` so that `live`, `tasks`, `web` and `cli` depend on it and not
on each other. Provider choices come from the catalogue (config/catalog.py).
`docs/session-spec.schema.json` is generated from this model (`avatar schema`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from config import catalog
from config.catalog import AvatarName, LLMName, STTName, TTSName

DEFAULT_INSTRUCTIONS = (
    "You are Ava, a friendly voice assistant shown as a talking face in a video call. "
    "Answer in one or two short spoken sentences. No lists, no markdown, no emojis."
)


# Names a session may pass through to a provider: no spaces, slashes only in model names
# (`org/model` on vLLM), never a URL or a file path.
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,127}$"
VOICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,127}$"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"


class STTChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: STTName | None = Field(
        default=None, description=f"Override the configured STT provider: {catalog.describe('stt')}."
    )
    model: str | None = Field(default=None, pattern=MODEL_PATTERN, description="STT model.")


class LLMChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: LLMName | None = Field(
        default=None, description=f"LLM provider: {catalog.describe('llm')}."
    )
    model: str | None = Field(default=None, pattern=MODEL_PATTERN, description="LLM model name.")
    endpoint: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="Name of one of the operator's OpenAI-compatible endpoints (`LLM__ENDPOINTS`).",
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)

    @model_validator(mode="before")
    @classmethod
    def _no_urls(cls, data: object) -> object:
        """The configured key goes wherever the URL points: only the operator picks URLs."""
        if isinstance(data, dict) and "base_url" in data:
            raise ValueError(
                "base_url cannot be set by a session; name one of the operator's endpoints "
                "with llm.endpoint"
            )
        return data


class TTSChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: TTSName | None = Field(
        default=None, description=f"TTS provider: {catalog.describe('tts')}."
    )
    voice: str | None = Field(default=None, pattern=VOICE_PATTERN, description="Voice id.")
    model: str | None = Field(default=None, pattern=MODEL_PATTERN, description="TTS model.")


class AvatarChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: AvatarName | None = Field(
        default=None,
        description=f"Avatar provider: {catalog.describe('avatar')}; `none` is audio only.",
    )
    avatar_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="The hosted avatar's id at its vendor, or the name of a local portrait "
        "pack (a folder under `var/portraits`, or `astronaut`).",
    )


class SessionSpec(BaseModel):
    """What one agent session should be. Every field is optional but the ids."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(default=1, description="Schema version.")
    session_id: str | None = Field(
        default=None,
        max_length=64,
        description="Id of the session record in the store (set by provisioning).",
    )
    instructions: str = Field(
        default=DEFAULT_INSTRUCTIONS,
        min_length=1,
        max_length=8000,
        description="Persona / system instructions.",
    )
    knowledge: str | None = Field(
        default=None,
        max_length=20_000,
        description=(
            "The operator's knowledge (hours, prices, names...): the passages relevant to "
            "each caller turn are retrieved locally and given to the model."
        ),
    )
    greeting: str | None = Field(
        default="Hello! I'm Ava. How can I help you today?",
        max_length=500,
        description="Said when the caller joins; empty or null for none.",
    )
    language: str = Field(default="en", min_length=2, max_length=16, description="Language.")
    stt: STTChoice = Field(default_factory=STTChoice)
    llm: LLMChoice = Field(default_factory=LLMChoice)
    tts: TTSChoice = Field(default_factory=TTSChoice)
    avatar: AvatarChoice = Field(default_factory=AvatarChoice)
    text_chat: bool = Field(
        default=False,
        description="Let callers type to the agent (LiveKit text streams on `lk.chat`). Off: "
        "the agent hears only speech, and callers' tokens cannot publish data.",
    )
    max_session_minutes: float | None = Field(
        default=None, gt=0, le=24 * 60,
        description="End the session sooner than the operator's limit (never later).",
    )
    idle_timeout_seconds: float | None = Field(
        default=None, gt=0, le=24 * 3600,
        description="End an idle session sooner than the operator's limit (never later).",
    )


class SpecError(ValueError):
    """Invalid dispatch metadata; the message names the field."""


def spec_problems(err: ValidationError) -> dict[str, str]:
    """`{"llm.temperature": "..."}`: the first problem per field, never the input value."""
    out: dict[str, str] = {}
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "metadata"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "string_pattern_mismatch":
            msg = (
                "use letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(no spaces, URLs or paths)"
            )
        out.setdefault(loc, msg)
    return out


def parse_spec(raw: str | None) -> SessionSpec:
    """Parse the dispatch metadata; empty metadata means every default."""
    if not raw or not raw.strip():
        return SessionSpec()
    try:
        return SessionSpec.model_validate_json(raw)
    except ValidationError as err:
        problems = "; ".join(f"{k}: {v}" for k, v in spec_problems(err).items())
        raise SpecError(f"invalid session metadata: {problems}") from None
