"""Callers that do not sound like the agent: Flite's and espeak-ng's voices (Debian packages,
installed by scripts/setup.sh), written to WAV for the project's caller to speak."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def other_voice_wav(text: str, path: Path, engine: str = "flite") -> Path:
    """``text`` said by Flite's ``slt`` voice or espeak-ng's British ``m3`` variant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if engine == "flite":
        if shutil.which("flite") is None:
            raise RuntimeError("flite is missing: run scripts/setup.sh (apt-get install flite)")
        cmd = ["flite", "-voice", "slt", "-t", text, "-o", str(path)]
    else:
        cmd = ["espeak-ng", "-v", "en-gb+m3", "-w", str(path), text]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return path
