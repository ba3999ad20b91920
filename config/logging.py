"""Logging set-up shared by all processes, with secrets masked in every record."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from config.settings import Settings

_RESERVED = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class SecretMaskFilter(logging.Filter):
    """Replaces any configured secret value that slips into a log record: its message, the
    fields passed with ``extra=``, and the text of its traceback."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        masked = self.mask(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        for key, val in list(vars(record).items()):
            if key in _RESERVED:
                continue
            if isinstance(val, str):
                setattr(record, key, self.mask(val))
            elif val is not None and not isinstance(val, int | float | bool):
                text = str(val)
                if self.mask(text) != text:
                    setattr(record, key, self.mask(text))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_mask: SecretMaskFilter | None = None


def install_secret_mask(secrets: list[str]) -> None:
    """Mask secrets in every log record of this process, whoever configured the handlers.

    Done where loggers build records (`Logger.makeRecord`, after ``extra`` is applied)
    because filters on a logger do not see propagated records, and the live worker's and
    gunicorn's handlers are not configured by us. Later calls add secrets.
    """
    global _mask
    values = [s for s in secrets if s]
    if _mask is not None:
        _mask._secrets = sorted({*_mask._secrets, *values}, key=len, reverse=True)
        return
    if not values:
        return
    mask = _mask = SecretMaskFilter(values)
    original = logging.Logger.makeRecord

    def make_record(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(self, *args, **kwargs)
        mask.filter(record)
        return record

    logging.Logger.makeRecord = make_record  # type: ignore[method-assign]


def setup_logging(settings: Settings) -> None:
    """Idempotent: configures the root logger once per process."""
    root = logging.getLogger()
    if getattr(root, "_avatar_configured", False):
        return
    install_secret_mask(settings.secret_values())
    handler = logging.StreamHandler(sys.stderr)
    if settings.logging.json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(settings.logging.level)
    root._avatar_configured = True  # type: ignore[attr-defined]
