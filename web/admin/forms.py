"""The launch form, validated with pydantic and mapped onto a `SessionSpec`."""

from __future__ import annotations

from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config import catalog
from config.catalog import AvatarName, LLMName, STTName, TTSName
from config.session import (
    DEFAULT_INSTRUCTIONS,
    ID_PATTERN,
    MODEL_PATTERN,
    VOICE_PATTERN,
    SessionSpec,
)
from config.settings import Settings

from ..api.schemas import NAME_PATTERN

LANGUAGES: tuple[tuple[str, str], ...] = (
    ("en", "English"),
    ("de", "German"),
    ("fr", "French"),
    ("es", "Spanish"),
    ("it", "Italian"),
    ("nl", "Dutch"),
    ("pt", "Portuguese"),
)
# The choices of each slot, from the catalogue.
PROVIDERS: dict[str, tuple[str, ...]] = {slot: catalog.names(slot) for slot in catalog.SLOTS}


KNOWLEDGE_MAX_CHARS = 20_000  # SessionSpec.knowledge's limit
KNOWLEDGE_MAX_BYTES = 4 * KNOWLEDGE_MAX_CHARS  # UTF-8: at most 4 bytes a character


class UploadError(ValueError):
    """An uploaded file the form cannot use; the message is shown next to the field."""


def read_knowledge_upload(stream: IO[bytes], filename: str) -> str:
    """The text of an uploaded knowledge file (plain text or markdown, UTF-8, size-limited).

    Reads at most one byte past the limit, so a huge upload is refused without being read."""
    if not filename.lower().endswith((".txt", ".md", ".markdown", ".text", ".csv")):
        raise UploadError("Upload a plain text file (.txt or .md).")
    data = stream.read(KNOWLEDGE_MAX_BYTES + 1)
    if len(data) > KNOWLEDGE_MAX_BYTES:
        raise UploadError(f"The file is too large: at most {KNOWLEDGE_MAX_CHARS:,} characters.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UploadError("The file is not UTF-8 text.") from None
    if len(text) > KNOWLEDGE_MAX_CHARS:
        raise UploadError(f"The file is too large: at most {KNOWLEDGE_MAX_CHARS:,} characters.")
    return text


class LaunchForm(BaseModel):
    """Flat form fields; empty strings mean "use the configured default"."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    room: str | None = Field(default=None, max_length=128, pattern=NAME_PATTERN)
    instructions: str = Field(min_length=1, max_length=8000)
    greeting: str | None = Field(default=None, max_length=500)
    knowledge: str | None = Field(default=None, max_length=KNOWLEDGE_MAX_CHARS)
    language: str = Field(min_length=2, max_length=16, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    stt_provider: STTName
    llm_provider: LLMName
    llm_model: str | None = Field(default=None, max_length=128, pattern=MODEL_PATTERN)
    tts_provider: TTSName
    tts_voice: str | None = Field(default=None, max_length=128, pattern=VOICE_PATTERN)
    avatar_provider: AvatarName
    avatar_id: str | None = Field(default=None, max_length=128, pattern=ID_PATTERN)
    request_key: str | None = Field(default=None, max_length=64)

    @field_validator("room", "greeting", "knowledge", "llm_model", "tts_voice", "avatar_id", "request_key",
                     mode="before")
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    def spec(self) -> SessionSpec:
        return SessionSpec.model_validate(
            {
                "instructions": self.instructions,
                "greeting": self.greeting,
                "knowledge": self.knowledge,
                "language": self.language,
                "stt": {"provider": self.stt_provider},
                "llm": {"provider": self.llm_provider, "model": self.llm_model},
                "tts": {"provider": self.tts_provider, "voice": self.tts_voice},
                "avatar": {"provider": self.avatar_provider, "avatar_id": self.avatar_id},
            }
        )


FIELD_LABELS = {
    "room": "Room",
    "instructions": "Instructions",
    "greeting": "Greeting",
    "knowledge": "Knowledge",
    "knowledge_file": "Knowledge file",
    "language": "Language",
    "stt_provider": "Speech-to-text",
    "llm_provider": "Language model",
    "llm_model": "Model",
    "tts_provider": "Text-to-speech",
    "tts_voice": "Voice",
    "avatar_provider": "Avatar",
    "avatar_id": "Avatar id",
}


# Spec fields the launch form sets, by form field (for the operator-policy errors).
SPEC_FIELDS = {
    "llm.model": "llm_model",
    "tts.voice": "tts_voice",
    "avatar.avatar_id": "avatar_id",
}


def form_errors(err: ValidationError) -> dict[str, str]:
    """Field name -> a sentence an operator understands."""
    out: dict[str, str] = {}
    for e in err.errors():
        name = str(e["loc"][0]) if e["loc"] else "form"
        kind = e["type"]
        if kind == "missing" or (kind == "string_too_short" and e.get("input") == ""):
            msg = "This field is required."
        elif kind == "string_pattern_mismatch" and name == "room":
            msg = "Use letters, digits, '.', '_' or '-', starting with a letter or digit."
        elif kind == "string_pattern_mismatch" and name == "language":
            msg = "Use a language code such as en or pt-BR."
        elif kind == "string_pattern_mismatch":
            msg = "Use letters, digits, '.', '_' or '-' (no spaces, addresses or paths)."
        elif kind == "literal_error":
            msg = "Choose one of the listed options."
        else:
            msg = e["msg"].removeprefix("Value error, ").rstrip(".") + "."
        out.setdefault(name, msg)
    return out


def defaults(settings: Settings) -> dict[str, str]:
    """Initial form values: the configured providers."""
    return {
        "room": "",
        "instructions": DEFAULT_INSTRUCTIONS,
        "greeting": SessionSpec().greeting or "",
        "knowledge": "",
        "language": settings.stt.language or "en",
        "stt_provider": settings.stt.provider,
        "llm_provider": settings.llm.provider,
        "llm_model": "",
        "tts_provider": settings.tts.provider,
        "tts_voice": "",
        "avatar_provider": settings.avatar.provider,
        "avatar_id": "",
    }
