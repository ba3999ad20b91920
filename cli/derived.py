"""Files derived from the catalogue and the models: the session spec's JSON schema and the
provider lines of `.env.example`. `avatar schema --write` regenerates them; a test fails
when a committed copy is stale, so adding a provider cannot leave them behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

from config import catalog
from config.session import SessionSpec
from config.settings import PROJECT_ROOT, Settings, load_settings

SCHEMA_PATH = PROJECT_ROOT / "docs" / "session-spec.schema.json"
ENV_EXAMPLE_PATH = PROJECT_ROOT / ".env.example"


def session_schema() -> str:
    return json.dumps(SessionSpec.model_json_schema(), indent=2) + "\n"


def env_example(text: str) -> str:
    """`text` (the committed `.env.example`) with its catalogue-derived lines rewritten."""
    text = re.sub(
        r"^# Vendor keys: .*? fill ",
        "# Vendor keys: " + ", ".join(catalog.vendor_keys()) + " fill ",
        text,
        flags=re.M,
    )
    for slot in catalog.SLOTS:
        group = Settings.model_fields[slot].annotation
        desc = group.model_fields["provider"].description  # type: ignore[union-attr]
        text = re.sub(
            rf"^# [^\n]*\n(# {slot.upper()}__PROVIDER=)", rf"# {desc}\n\1", text, flags=re.M
        )
    prices = json.dumps(load_settings(_env_file=None).pricing.prices)
    return re.sub(r"^# PRICING__PRICES=.*$", lambda _m: f"# PRICING__PRICES={prices}", text,
                  flags=re.M)


def derived_files() -> dict[Path, str]:
    """What each derived file should contain now."""
    return {
        SCHEMA_PATH: session_schema(),
        ENV_EXAMPLE_PATH: env_example(ENV_EXAMPLE_PATH.read_text()),
    }
