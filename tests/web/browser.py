"""Helpers for the browser tests: a real HTTP server for the app and Debian's Chromium."""

from __future__ import annotations

import math
import struct
import threading
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def fake_media_args(wav: Path) -> list[str]:
    """Chromium's fake microphone (and camera) reading `wav`, with permission prompts granted."""
    return [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """Serve `app` with werkzeug's threaded server on 127.0.0.1 and a free port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="web-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@contextmanager
def chromium(extra_args: list[str] | None = None) -> Iterator[Any]:
    """A headless Chromium from Debian (no Playwright browser download)."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS + (extra_args or [])
        )
        try:
            yield browser
        finally:
            browser.close()


def tone_wav(path: Path, *, seconds: float = 3.0, rate: int = 48000, freq: float = 440.0) -> Path:
    """A short tone: enough for the fake microphone to have something to send."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / rate)))
            for i in range(int(seconds * rate))
        )
        w.writeframes(frames)
    return path
