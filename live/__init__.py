"""Long-lived LiveKit Agents workers: one AgentSession per room (`python -m live.worker`)."""
