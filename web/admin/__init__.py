"""The operators' pages: dashboard, sessions, launch, session detail, usage, settings, join."""

from __future__ import annotations

import csv
import io
import json
import logging
import secrets
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from pydantic import ValidationError
from sqlalchemy import func, select
from werkzeug.wrappers import Response as WerkzeugResponse

from config.policy import spec_violations
from config.session import SessionSpec
from config.settings import mask_url
from store.models import AgentSessionRecord, SessionCost, SessionStatus, Summary

from .. import charts, queries
from ..auth import current_admin, login_required
from ..backend import provision_or_discard
from ..db import get_db
from ..settings import app_settings, backend
from .forms import (
    FIELD_LABELS,
    LANGUAGES,
    PROVIDERS,
    SPEC_FIELDS,
    LaunchForm,
    UploadError,
    defaults,
    form_errors,
    read_knowledge_upload,
)

logger = logging.getLogger(__name__)

bp = Blueprint("admin", __name__)

PER_PAGE = 20
EXPORTS: dict[str, tuple[str, str, str]] = {
    # fmt: (report attribute, mimetype, extension)
    "json": ("export_json", "application/json", "json"),
    "vtt": ("export_vtt", "text/vtt", "vtt"),
    "srt": ("export_srt", "application/x-subrip", "srt"),
    "md": ("export_markdown", "text/markdown", "md"),
}


def _today() -> date:
    return datetime.now(UTC).date()


def get_session_or_404(session_id: str) -> AgentSessionRecord:
    """:raise 404: unknown id."""
    record = get_db().get(AgentSessionRecord, session_id) if len(session_id) <= 64 else None
    if record is None:
        abort(404)
    return record


def _parse_date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness for the process manager (no login, no database)."""
    return jsonify({"ok": True})


@bp.get("/")
@login_required
def dashboard() -> str:
    db = get_db()
    today = _today()
    days = queries.days_back(today, 14)
    per_day = queries.sessions_per_day(db, days)
    cost = queries.cost_per_day(db, days)
    open_counts = queries.count_open(db)
    latency = queries.latency_by_stage(db, since=datetime.now(UTC) - timedelta(days=7))
    recent = list(
        db.scalars(select(AgentSessionRecord).order_by(AgentSessionRecord.created_at.desc()).limit(6))
    )
    failed_today = db.scalar(
        select(func.count()).select_from(AgentSessionRecord).where(
            AgentSessionRecord.status == SessionStatus.FAILED,
            AgentSessionRecord.created_at >= queries.day_start(today),
        )
    )
    label = lambda d: d.strftime("%b %d")  # noqa: E731
    return render_template(
        "admin/dashboard.html",
        active=open_counts.get(SessionStatus.ACTIVE, 0),
        starting=sum(open_counts.get(s, 0) for s in ("pending", "provisioning", "dispatched")),
        sessions_today=per_day[today],
        cost_today=cost[today],
        failed_today=failed_today or 0,
        sessions_chart=charts.bar_chart(
            [(label(d), per_day[d]) for d in days], fmt=charts.fmt_count, color="#6366f1",
            integer=True,
        ),
        cost_chart=charts.bar_chart(
            [(label(d), cost[d]) for d in days], fmt=charts.fmt_money, color="#10b981"
        ),
        latency=latency,
        latency_max=max((s.p95 or 0.0 for s in latency), default=0.0),
        recent=recent,
        costs=queries.session_costs(db, [r.id for r in recent]),
    )


@bp.get("/sessions")
@login_required
def sessions() -> str:
    args = request.args
    status = args.get("status") or None
    if status and status not in {str(s) for s in SessionStatus}:
        status = None
    filters = queries.SessionFilters(
        status=status,
        room=(args.get("room") or "").strip()[:128] or None,
        provider=args.get("provider") or None,
        date_from=_parse_date(args.get("from")),
        date_to=_parse_date(args.get("to")),
    )
    page = max(1, args.get("page", 1, type=int) or 1)
    rows, total = queries.filtered_sessions(get_db(), filters, page=page, per_page=PER_PAGE)
    pages = max(1, -(-total // PER_PAGE))
    query = {k: v for k, v in args.items() if k != "page" and v}
    return render_template(
        "admin/sessions.html",
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        filters=filters,
        query=query,
        statuses=[str(s) for s in SessionStatus],
        provider_names=sorted({p for v in PROVIDERS.values() for p in v}),
        costs=queries.session_costs(get_db(), [r.id for r in rows]),
    )


@bp.route("/sessions/new", methods=["GET", "POST"])
@login_required
def launch() -> Any:
    """Create a session and enqueue provisioning; the session page shows the progress."""
    settings = app_settings()
    if request.method == "GET":
        values = defaults(settings)
        values["room"] = request.args.get("room", "")[:128]
        return render_template(
            "admin/launch.html",
            values=values,
            errors={},
            request_key=uuid.uuid4().hex,
            languages=LANGUAGES,
            providers=PROVIDERS,
        )
    form = request.form.to_dict()
    errors: dict[str, str] = {}
    upload = request.files.get("knowledge_file")
    if upload is not None and upload.filename:
        try:
            text = read_knowledge_upload(upload.stream, upload.filename)
            form["knowledge"] = "\n\n".join(t for t in (form.get("knowledge", "").strip(), text) if t)
        except UploadError as err:
            errors["knowledge_file"] = str(err)
    data: LaunchForm | None = None
    spec: SessionSpec | None = None
    try:
        data = LaunchForm.model_validate(form)
        spec = data.spec()
    except ValidationError as err:
        errors = {**form_errors(err), **errors}
    else:
        errors = {
            **errors,
            **{
                SPEC_FIELDS.get(k, k): v[:1].upper() + v[1:] + "."
                for k, v in spec_violations(spec, settings).items()
            },
        }
    if errors or data is None or spec is None:
        form.pop("knowledge_file", None)
        return (
            render_template(
                "admin/launch.html",
                values={**defaults(settings), **form},
                errors=errors,
                error_labels=FIELD_LABELS,
                request_key=form.get("request_key") or uuid.uuid4().hex,
                languages=LANGUAGES,
                providers=PROVIDERS,
            ),
            422,
        )
    db = get_db()
    key = f"admin:{data.request_key}" if data.request_key else None
    existed = key is not None and db.scalar(
        select(AgentSessionRecord.id).where(AgentSessionRecord.request_key == key)
    )
    b = backend()
    record, created = b.create_session(
        db, settings, spec, room=data.room, source="admin", request_key=key
    )
    db.commit()
    existed = existed or not created  # the other submit of a double submit won the insert
    if not existed:  # a double-submitted form must not provision twice
        provision_or_discard(db, settings, record, b.enqueue_provision)  # 503 if no broker
        logger.info("session launched", extra={"session_id": record.id, "room": record.room})
    return redirect(url_for("admin.session_detail", session_id=record.id))


@bp.get("/sessions/<session_id>")
@login_required
def session_detail(session_id: str) -> str:
    record = get_session_or_404(session_id)
    db = get_db()
    settings = app_settings()
    turns = queries.turn_latencies(db, record.id)
    series = [label for _, label in queries.LATENCY_STAGES]
    latency_chart = charts.stacked_chart(
        [
            (f"#{i + 1}", [getattr(t, key) for key, _ in queries.LATENCY_STAGES])
            for i, t in enumerate(turns)
        ],
        series=series,
        fmt=charts.fmt_seconds,
    )
    report = queries.get_report(db, record.id)
    lines = queries.transcript_lines(db, record.id)
    return render_template(
        "admin/session.html",
        s=record,
        spec=record.spec or {},
        steps=queries.progress(record),
        lines=lines,
        last_line_id=max((line.id for line in lines), default=0),
        summary=db.get(Summary, record.id),
        usage=queries.usage_breakdown(db, settings, record.id),
        currency=settings.pricing.currency,
        turns=turns,
        latency_chart=latency_chart,
        latency=queries.latency_by_stage(db, since=datetime.min, session_id=record.id),
        report=report,
        exports=EXPORTS if report is not None else {},
    )


@bp.get("/sessions/<session_id>/status.json")
@login_required
def session_status(session_id: str) -> Response:
    record = get_session_or_404(session_id)
    return jsonify({"session": queries.session_dict(record), "progress": queries.progress(record)})


@bp.get("/sessions/<session_id>/transcript.json")
@login_required
def session_transcript(session_id: str) -> Response:
    record = get_session_or_404(session_id)
    after = request.args.get("after", 0, type=int) or 0
    lines = queries.transcript_lines(get_db(), record.id, after_id=after)
    return jsonify(
        {
            "status": record.status,
            "is_open": record.is_open,
            "lines": [queries.line_dict(line) for line in lines],
        }
    )


@bp.post("/sessions/<session_id>/end")
@login_required
def end_session(session_id: str) -> WerkzeugResponse:
    record = get_session_or_404(session_id)
    if not record.is_open:
        flash(f"The session is already {record.status}.", "info")
    else:
        try:
            backend().end_session(app_settings(), record)
        except Exception:
            logger.exception("ending session failed", extra={"session_id": record.id})
            flash("LiveKit did not accept the request to close the room. Try again.", "error")
        else:
            flash("Closing the room. The session is finalized in the background.", "success")
    return redirect(url_for("admin.session_detail", session_id=record.id))


@bp.get("/sessions/<session_id>/export.<fmt>")
@login_required
def export(session_id: str, fmt: str) -> Response:
    """:raise 404: unknown id, format, or no transcript report yet."""
    record = get_session_or_404(session_id)
    if fmt not in EXPORTS:
        abort(404)
    report = queries.get_report(get_db(), record.id)
    if report is None:
        abort(404)
    attr, mimetype, ext = EXPORTS[fmt]
    return Response(
        getattr(report, attr) or "",
        mimetype=mimetype,
        headers={
            "Content-Disposition": f'attachment; filename="transcript-{record.id}.{ext}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


@bp.get("/sessions/<session_id>/join")
@login_required
def join(session_id: str) -> str:
    """The browser client: joins the room with the microphone, shows avatar and captions."""
    record = get_session_or_404(session_id)
    settings = app_settings()
    admin = current_admin()
    identity = f"operator-{admin.id if admin else 0}-{secrets.token_hex(3)}"
    token = ""
    if record.is_open:
        token = backend().mint_token(
            settings, room=record.room, identity=identity, name=admin.email if admin else None,
            can_publish_data=bool((record.spec or {}).get("text_chat")),
        )
    return render_template(
        "admin/join.html",
        s=record,
        livekit_url=settings.livekit.browser_url,
        token=token,
        identity=identity,
    )


def _usage_range() -> tuple[date, date]:
    today = _today()
    date_to = _parse_date(request.args.get("to")) or today
    date_from = _parse_date(request.args.get("from")) or (date_to - timedelta(days=29))
    if date_from > date_to:
        date_from, date_to = date_to, date_from
    if (date_to - date_from).days > 366:
        date_from = date_to - timedelta(days=366)
    return date_from, date_to


@bp.get("/usage")
@login_required
def usage() -> str:
    date_from, date_to = _usage_range()
    report = queries.usage_report(get_db(), date_from, date_to)
    label = lambda d: d.strftime("%b %d")  # noqa: E731
    cost_chart = charts.bar_chart(
        [(label(d), report.cost_by_day[d]) for d in report.days], fmt=charts.fmt_money,
        color="#10b981", width=1080, height=220, max_labels=12,
    )
    sessions_chart = charts.bar_chart(
        [(label(d), report.sessions_by_day[d]) for d in report.days], fmt=charts.fmt_count,
        color="#6366f1", integer=True,
    )
    settings = app_settings()
    provider_max = max((float(p["cost"]) for p in report.by_provider), default=0.0)
    return render_template(
        "admin/usage.html",
        report=report,
        date_from=date_from,
        date_to=date_to,
        cost_chart=cost_chart,
        sessions_chart=sessions_chart,
        provider_max=provider_max,
        currency=settings.pricing.currency,
        sessions_total=get_db().scalar(
            select(func.count(func.distinct(SessionCost.session_id))).where(
                SessionCost.day >= date_from, SessionCost.day <= date_to
            )
        ) or 0,
    )


@bp.get("/usage.csv")
@login_required
def usage_csv() -> Response:
    date_from, date_to = _usage_range()
    report = queries.usage_report(get_db(), date_from, date_to)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["day", "provider", "metric", "quantity", "cost", "sessions"])
    for r in report.rows:
        writer.writerow(
            [r["day"].isoformat(), _csv_safe(r["provider"]), _csv_safe(r["metric"]),
             f"{r['quantity']:.6g}", f"{r['cost']:.6f}", r["sessions"]]
        )
    return Response(
        buf.getvalue(),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="usage-{date_from}-{date_to}.csv"'
        },
    )


# Characters a spreadsheet may read as the start of a formula (OWASP's list, plus the
# full-width forms some apps normalise), also after leading blanks.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def _csv_safe(value: str) -> str:
    """Keep spreadsheet apps from evaluating a cell as a formula."""
    return "'" + value if value.lstrip(" ")[:1] in FORMULA_STARTS else value


@bp.get("/settings")
@login_required
def settings_page() -> str:
    settings = app_settings()
    masked = settings.masked()
    groups = {k: v for k, v in masked.items() if isinstance(v, dict)}
    scalars = {k: v for k, v in masked.items() if not isinstance(v, dict)}
    host = request.host.rsplit(":", 1)[0] if request.host else "127.0.0.1"
    return render_template(
        "admin/settings.html",
        groups=groups,
        scalars=scalars,
        flower_url=f"http://{host}:{settings.web.flower_port}/",
        livekit_url=mask_url(settings.livekit.browser_url),
        livekit_http=mask_url(settings.livekit.http_url),
        to_text=_to_text,
    )


def provider_tags(record: AgentSessionRecord) -> list[tuple[str, str]]:
    """Distinct providers of a session in slot order, each with the slots it fills."""
    slots = {"STT": record.stt_provider, "LLM": record.llm_provider,
             "TTS": record.tts_provider, "Avatar": record.avatar_provider}
    out: dict[str, list[str]] = {}
    for slot, name in slots.items():
        out.setdefault(name, []).append(slot)
    return [(name, ", ".join(s)) for name, s in out.items()]


def _to_text(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, indent=1, sort_keys=True)
    return str(value)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.template_filter("dt")
    def _dt(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
        v = queries.as_utc(value)
        return v.strftime(fmt) if v else "—"

    @app.template_filter("duration")
    def _duration(seconds: float | None) -> str:
        if seconds is None:
            return "—"
        s = int(seconds)
        return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"

    app.add_template_global(provider_tags, "provider_tags")
    app.add_template_global(charts.fmt_money, "money")
    app.add_template_global(charts.fmt_seconds, "secs")
    app.add_template_global(charts.fmt_count, "count")
