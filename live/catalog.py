"""The local models and voices that ship as packages, by the names settings and specs use.

Kept free of heavy imports so the web process can check a session spec without loading the
live worker's providers.
"""

from __future__ import annotations

WHISPER_MODELS = ("tiny.en", "base")
DEFAULT_WHISPER = "tiny.en"
LLM_MODELS = ("smollm2-135m",)
PIPER_VOICES = ("joe-us",)
