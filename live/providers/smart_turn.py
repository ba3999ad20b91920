"""Smart Turn v3: pipecat's open end-of-turn model (BSD-2), run here without pipecat.

The ONNX file (8 MiB) and its numpy Whisper-feature code ship in the ``pipecat-ai`` wheel,
which is installed without its dependencies (``scripts/setup.sh``): pipecat pins a protobuf
older than LiveKit's, and nothing else of it is needed. Neither module is imported through
the ``pipecat`` package (its ``__init__`` pulls in loguru and a version banner): both files
are read from the installed package's folder.

The model reads the last 8 s of the caller's audio and answers P(the turn is complete) from
prosody and phrasing. It was trained on natural speech; robotic voices confuse it, which is
why the session's detector combines it with the transcript (``live.providers.turn``).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW_SECONDS = 8
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
_PACKAGE_DIR = ("audio", "turn", "smart_turn")


class SmartTurnUnavailable(RuntimeError):
    """The pipecat-ai wheel (which carries the model) is not installed."""


def model_dir() -> Path:
    spec = importlib.util.find_spec("pipecat")  # finds the folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SmartTurnUnavailable(
            "Smart Turn needs the pipecat-ai wheel: "
            "pip install --no-deps 'pipecat-ai==1.14.0' (scripts/setup.sh does this)"
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*_PACKAGE_DIR)


def _load_features() -> Callable[..., np.ndarray]:
    path = model_dir() / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("_avatar_smart_turn_features", path)
    if spec is None or spec.loader is None:
        raise SmartTurnUnavailable(f"cannot load {path}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn: Callable[..., np.ndarray] = module.compute_whisper_log_mel_features
    return fn


class SmartTurnModel:
    """One ONNX session per process; ``predict`` is thread-safe and takes ~50-100 ms."""

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort

        path = model_dir() / "data" / MODEL_FILE
        if not path.exists():
            raise SmartTurnUnavailable(f"{path} is missing")
        so = ort.SessionOptions()
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), sess_options=so)
        self._features = _load_features()
        self._lock = threading.Lock()

    def predict(self, audio: np.ndarray) -> float:
        """P(turn complete) for 16 kHz mono float32 audio ending where the caller went quiet."""
        n = WINDOW_SECONDS * SAMPLE_RATE
        audio = audio[-n:] if audio.size > n else np.pad(audio, (n - audio.size, 0))
        mel = self._features(audio.astype(np.float32), do_normalize=True)
        with self._lock:
            out = self._session.run(None, {"input_features": mel[np.newaxis].astype(np.float32)})
        return float(np.asarray(out[0]).reshape(-1)[0])
