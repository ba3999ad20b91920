"""The agent: persona from the session's spec; spoken-style output for a talking face."""

from __future__ import annotations

from livekit.agents import Agent


class AvatarAgent(Agent):
    """A voice agent shown as a face. Tools can be added here as `@function_tool` methods."""

    def __init__(self, *, instructions: str) -> None:
        super().__init__(instructions=instructions)
