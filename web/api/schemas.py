"""Request bodies of the JSON API: validated with pydantic at the boundary."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from config.session import SessionSpec, spec_problems

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class CreateSessionRequest(SessionSpec):
    """Start an agent session: every SessionSpec field plus where and as whom to join."""

    model_config = ConfigDict(extra="forbid")

    room: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=NAME_PATTERN,
        description="Room to put the agent in; a new room name is generated when omitted.",
    )
    identity: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=NAME_PATTERN,
        description="Identity of the participant the returned token is for.",
    )
    name: str | None = Field(
        default=None, max_length=128, description="Display name of that participant."
    )

    @model_validator(mode="after")
    def _no_session_id(self) -> CreateSessionRequest:
        if self.session_id is not None:
            raise ValueError("session_id is set by the server")
        return self

    def spec(self) -> SessionSpec:
        data = self.model_dump(exclude={"room", "identity", "name", "session_id"})
        return SessionSpec.model_validate(data)


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: dict[str, str] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorBody


def field_errors(err: ValidationError) -> dict[str, str]:
    """`{"llm.temperature": "Input should be less than or equal to 2"}` (first error per field)."""
    return {("body" if k == "metadata" else k): v for k, v in spec_problems(err).items()}


def schema_for_openapi() -> dict[str, Any]:
    schema = CreateSessionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.get("properties", {}).pop("session_id", None)
    return schema
