"""Request bodies of the JSON API: validated with pydantic at the boundary."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    fields: dict[str, str] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: ErrorBody


def field_errors(err: ValidationError) -> dict[str, str]:
    """`{"llm.temperature": "Input should be less than or equal to 2"}` (first error per field)."""
    return {("body" if k == "metadata" else k): v for k, v in spec_problems(err).items()}


# --------------------------------------------------------------------------- responses
# The views build every response body through these models, and the OpenAPI description is
# generated from them: a field added to one and not the other fails at once (extra="forbid").

IsoTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
SessionStatusName = Literal["pending", "provisioning", "dispatched", "active", "ended", "failed"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionProviders(_Body):
    stt: str
    llm: str
    tts: str
    avatar: str


class SessionView(_Body):
    """The public view of a session."""

    id: str
    room: str
    status: SessionStatusName
    source: str = Field(description="api, admin, webhook or cli.")
    providers: SessionProviders
    error: str | None
    end_reason: str | None
    created_at: IsoTime
    provisioned_at: IsoTime | None = Field(description="When the room and dispatch were made.")
    started_at: IsoTime | None = Field(description="When the agent joined the room.")
    ended_at: IsoTime | None
    duration_seconds: float | None
    is_open: bool


class SessionCreated(_Body):
    session: SessionView
    room: str
    livekit_url: str = Field(description="Connect the LiveKit client here.")
    identity: str
    token: str = Field(description="Participant access token (JWT).")
    links: dict[str, str]


class ProgressStep(_Body):
    key: SessionStatusName
    label: str
    state: Literal["done", "current", "todo", "failed"]


class SessionDetail(_Body):
    session: SessionView
    progress: list[ProgressStep]


class TranscriptLineView(_Body):
    id: int
    speaker: str = Field(description="user or agent.")
    text: str
    language: str | None
    interrupted: bool
    started_at: IsoTime | None
    ended_at: IsoTime | None


class TranscriptReportView(_Body):
    lines: list[Any]
    stats: dict[str, Any]
    created_at: IsoTime | None


class TranscriptView(_Body):
    session_id: str
    status: SessionStatusName
    lines: list[TranscriptLineView]
    report: TranscriptReportView | None = Field(description="Set once post-processing ran.")


class SummaryBody(_Body):
    model: str
    summary: str
    key_points: list[str]
    action_items: list[str]
    sentiment: str
    source_line_count: int
    created_at: IsoTime | None


class SummaryView(_Body):
    session_id: str
    status: SessionStatusName
    ready: bool
    summary: SummaryBody | None


class UsageItem(_Body):
    provider: str
    metric: str
    quantity: float
    unit_price: float
    cost: float


class UsageView(_Body):
    session_id: str
    currency: str
    final: bool = Field(description="False while the costs are estimates from the price table.")
    total_cost: float
    items: list[UsageItem]


class EndingView(_Body):
    session_id: str
    status: Literal["ending"]


def body(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` checked against its documented model, as JSON-ready values."""
    return model.model_validate(data).model_dump(mode="json")
