"""Logging set-up shared by all processes, with secrets masked in every record."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from config.settings import Settings

_RESERVED = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class SecretMaskFilter(logging.Filter):
    """Replaces any configured secret value that slips into a log message."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        msg = record.getMessage()
        masked = msg
        for s in self._secrets:
            masked = masked.replace(s, "***")
        if masked != msg:
            record.msg, record.args = masked, None
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
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_mask_installed = False


def install_secret_mask(secrets: list[str]) -> None:
    """Mask secrets in every log record of this process, whoever configured the handlers.

    Done in the record factory because filters on a logger do not see propagated records;
    the live worker's handlers are configured by LiveKit's CLI, not by us.
    """
    global _mask_installed
    values = [s for s in secrets if s]
    if _mask_installed or not values:
        return
    previous = logging.getLogRecordFactory()
    mask = SecretMaskFilter(values)

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        mask.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    _mask_installed = True


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
