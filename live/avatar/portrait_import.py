"""Turn a user's photo into a portrait pack (``avatar portrait import PHOTO``).

Landmarks come from MediaPipe FaceMesh 0.10.21, which pins protobuf<5 and so cannot live in
the service's environment (livekit needs a newer protobuf). It runs once per photo in a venv
of its own (created on first use, ~1 minute of pip), through ``_landmarks_script.py`` in a
subprocess; the result is a pack folder the renderer loads with no face model at all.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from live.avatar.portrait import PortraitError, build_pack_json, write_pack

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = ROOT / ".tools" / "portrait-venv"
REQUIREMENTS = ("mediapipe==0.10.21", "numpy<2", "opencv-python-headless<4.12", "protobuf<5")
SCRIPT = Path(__file__).resolve().parent / "_landmarks_script.py"
MAX_SIDE = 1024  # larger photos are scaled down first: landmarks need no more


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(venv: Path = DEFAULT_VENV, *, python: str | None = None) -> Path:
    """Create the MediaPipe venv unless it already imports mediapipe; return its python."""
    py = venv_python(venv)
    if py.exists() and subprocess.run(
        [str(py), "-c", "import mediapipe"], capture_output=True, timeout=120
    ).returncode == 0:
        return py
    base = python or os.environ.get("PORTRAIT_PYTHON") or _python311()
    logger.info("creating the portrait venv", extra={"venv": str(venv)})
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True,
                   timeout=1800)
    return py


def _python311() -> str:
    # mediapipe 0.10.21 has wheels for CPython 3.9-3.12
    if sys.version_info[:2] in ((3, 9), (3, 10), (3, 11), (3, 12)):
        return sys.executable
    return "python3.11"


def find_landmarks(photo: Path, *, venv: Path = DEFAULT_VENV) -> dict[str, object]:
    """Run FaceMesh on ``photo`` in the portrait venv; raw points in photo pixels."""
    py = ensure_venv(venv)
    proc = subprocess.run(
        [str(py), str(SCRIPT), str(photo)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unknown"
        raise PortraitError(f"landmark detection failed for {photo.name}: {reason}")
    raw: dict[str, object] = json.loads(proc.stdout)
    return raw


def import_portrait(
    photo: Path, out_dir: Path, *, venv: Path = DEFAULT_VENV, licence: str = "user supplied"
) -> Path:
    """Write a portrait pack for ``photo`` into ``out_dir`` and return ``out_dir``."""
    bgr = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PortraitError(f"cannot read image {photo}")
    h, w = bgr.shape[:2]
    scale = min(1.0, MAX_SIDE / max(h, w))
    if scale < 1.0:
        bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    rgb: npt.NDArray[np.uint8] = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))  # type: ignore[assignment]
    out_dir.mkdir(parents=True, exist_ok=True)
    # landmarks are found on exactly the pixels the pack stores
    staged = out_dir / "portrait.png"
    if not cv2.imwrite(str(staged), bgr):
        raise PortraitError(f"cannot write {staged}")
    raw = find_landmarks(staged, venv=venv)
    meta = build_pack_json(raw, source=photo.name, licence=licence)
    write_pack(rgb, meta, out_dir)
    logger.info("portrait pack written", extra={"pack": str(out_dir)})
    return out_dir
