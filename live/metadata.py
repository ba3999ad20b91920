"""Dispatch metadata: the per-session configuration the live worker receives as JSON.

Provisioning (Celery), the admin UI and the API build a :class:`SessionSpec`; LiveKit carries
it as the agent dispatch's metadata string; the worker validates it before anything starts.
`docs/session-spec.schema.json` is generated from this model (`avatar schema`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_INSTRUCTIONS = (
    "You are Ava, a friendly voice assistant shown as a talking face in a video call. "
    "Answer in one or two short spoken sentences. No lists, no markdown, no emojis."
)


class STTChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["local", "assemblyai"] | None = Field(
        default=None, description="Override the configured STT provider."
    )
    model: str | None = Field(default=None, description="STT model.")


class LLMChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["local", "openai"] | None = Field(default=None, description="LLM provider.")
    model: str | None = Field(default=None, description="LLM model name.")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)


class TTSChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["local", "espeak", "cartesia"] | None = Field(
        default=None, description="TTS provider."
    )
    voice: str | None = Field(default=None, description="Voice id.")
    model: str | None = Field(default=None, description="TTS model.")


class AvatarChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["local", "tavus", "hedra", "none"] | None = Field(
        default=None, description="Avatar provider; `none` is audio only."
    )
    avatar_id: str | None = Field(
        default=None, description="Tavus face id, Hedra avatar id, or local portrait pack."
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
    max_session_minutes: float | None = Field(default=None, gt=0, le=24 * 60)
    idle_timeout_seconds: float | None = Field(default=None, gt=0)


class SpecError(ValueError):
    """Invalid dispatch metadata; the message names the field."""


def parse_spec(raw: str | None) -> SessionSpec:
    """Parse the dispatch metadata; empty metadata means every default."""
    if not raw or not raw.strip():
        return SessionSpec()
    try:
        return SessionSpec.model_validate_json(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: {e['msg']}" for e in err.errors()
        )
        raise SpecError(f"invalid session metadata: {problems}") from None
