"""Helpers for the speech tests: audio conversion, and the benchmarks' word error rate."""

from __future__ import annotations

import numpy as np
from livekit import rtc

from bench.wer import normalize, wer

__all__ = ["normalize", "pcm_frame", "resample", "silence", "split_frames", "wer"]


def pcm_frame(pcm: bytes, sample_rate: int) -> rtc.AudioFrame:
    n = len(pcm) // 2
    return rtc.AudioFrame(pcm, sample_rate, 1, n)


def resample(pcm: bytes, rate_in: int, rate_out: int, channels_out: int = 1) -> rtc.AudioFrame:
    """Mono int16 PCM -> one frame at ``rate_out`` (duplicated to ``channels_out``)."""
    resampler = rtc.AudioResampler(rate_in, rate_out, num_channels=1)
    frames = [*resampler.push(pcm_frame(pcm, rate_in)), *resampler.flush()]
    mono = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    data = np.repeat(mono, channels_out) if channels_out > 1 else mono
    return rtc.AudioFrame(data.tobytes(), rate_out, channels_out, mono.shape[0])


def split_frames(frame: rtc.AudioFrame, ms: int = 10) -> list[rtc.AudioFrame]:
    """One long frame -> ``ms``-long frames, like a microphone track delivers."""
    step = frame.sample_rate * ms // 1000
    data = np.frombuffer(frame.data, dtype=np.int16).reshape(-1, frame.num_channels)
    return [
        rtc.AudioFrame(
            data[i : i + step].tobytes(),
            frame.sample_rate,
            frame.num_channels,
            len(data[i : i + step]),
        )
        for i in range(0, len(data), step)
    ]


def silence(seconds: float, sample_rate: int) -> bytes:
    return b"\0\0" * int(seconds * sample_rate)
