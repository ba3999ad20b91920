"""Lip sync stage by stage: in the generator, then at a subscriber of a real room.

    .venv/bin/python -m bench.lipsync [--repeats 4] [--load N] [--lead MS]

1. generator: Piper speech (with its phoneme timings) through ``FaceVideoGenerator``; the
   mouth opening of each frame (``FrameInfo``) is cross-correlated with the RMS of the audio
   chunk that frame carries: the offset the generator itself adds (smoothing, delay).
2. room: the in-process avatar publishes in a real livekit-server (re-run inside
   scripts/netns-run); a subscriber measures the offset the way ``avatar call`` does
   (``cli.call.lip_offset``: received audio envelope against the mouth region of the
   received frames) and, as a check, against the dark share of the known mouth box.

Offsets are mouth minus sound: positive = the sound comes first. ``--load N`` keeps N
busy-looping processes running. Writes bench/results/lipsync.json and lipsync.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY, SECRET = "benchkey", "bench-secret-0123456789abcdef0123456789abcdef"
TEXT = (
    "Hello! My name is Eileen. I flew the space shuttle, and today I would love to "
    "answer your questions about the mission."
)
FPS = 25
SIZE = 512


def speech() -> tuple[list[tuple[list[Any], np.ndarray]], int]:
    """Piper sentences: (phoneme timings, int16 audio) each, and the sample rate."""
    from engines.piper import get_piper
    from engines.store import process_models
    from live.alignment import PhonemeTiming

    voice = get_piper(process_models(), "joe-us", stream_vocoder=False)
    sr = int(voice.sample_rate)
    out: list[tuple[list[Any], np.ndarray]] = []
    for c in voice.synthesize_sync(TEXT):
        audio = np.frombuffer(c.pcm, dtype=np.int16)
        t, timings = 0.0, []
        for phoneme, samples in c.phonemes:
            d = int(samples) / sr
            timings.append(PhonemeTiming(phoneme, t, d))
            t += d
        out.append((timings, audio))
    return out, sr


def _xcorr_lag(a: np.ndarray, v: np.ndarray, step: float, max_lag: float) -> tuple[float, float]:
    """Lag of ``v`` behind ``a`` (s) with the highest correlation, and that correlation."""
    best = (0.0, -2.0)
    n = round(max_lag / step)
    for k in range(-n, n + 1):
        x, y = (a[: a.size - k], v[k:]) if k >= 0 else (a[-k:], v[: v.size + k])
        r = float(np.corrcoef(x, y)[0, 1])
        if r > best[1]:
            best = (k * step, r)
    return best


async def generator_stage(sentences: list[tuple[list[Any], np.ndarray]], sr: int,
                          aligned: bool) -> dict[str, float]:
    from livekit import rtc
    from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions

    from live.avatar.face import FaceRenderer
    from live.avatar.generator import FaceVideoGenerator, FrameInfo
    from live.avatar.portrait import load_pack

    infos: list[FrameInfo] = []
    opts = AvatarOptions(video_width=256, video_height=256, video_fps=FPS,
                         audio_sample_rate=24000, audio_channels=1)
    gen = FaceVideoGenerator(renderer=FaceRenderer(load_pack(), width=256, height=256),
                             options=opts, seed=1, frame_listener=infos.append,
                             render_in_thread=False)

    async def feed() -> None:
        for timings, audio in sentences:
            if aligned:
                gen.alignment_callback(timings, audio.size, sr)
            for i in range(0, audio.size, sr // 10):
                part = audio[i:i + sr // 10]
                await gen.push_audio(rtc.AudioFrame(part.tobytes(), sr, 1, part.size))
        await gen.push_audio(AudioSegmentEnd())

    feeder = asyncio.create_task(feed())
    async for item in gen:
        if isinstance(item, AudioSegmentEnd):
            break
    await feeder
    await gen.aclose()
    speaking = [i for i in infos if i.speaking]
    mouth = np.asarray([i.mouth.open for i in speaking])
    env = np.sqrt(np.asarray([i.audio_rms for i in speaking]))
    # 5 ms grid, linear between frame centres
    t = np.arange(mouth.size) / FPS
    grid = np.arange(0.0, t[-1], 0.005)
    lag, r = _xcorr_lag(np.interp(grid, t, env), np.interp(grid, t, mouth), 0.005, 0.2)
    return {"offset_s": round(lag, 3), "r": round(r, 3)}


async def room_stage(sentences: list[tuple[list[Any], np.ndarray]], sr: int, repeats: int,
                     lead: float, with_mic: bool) -> list[dict[str, float | None]]:
    import cv2
    from livekit import api, rtc
    from livekit.agents import AgentSession
    from livekit.agents.voice.io import PlaybackFinishedEvent

    from cli.call import _audio_envelope, _gray, lip_offset
    from cli.services import LiveKitServerConfig, start_livekit_server, stop_process
    from live.avatar import LocalAvatarOptions, LocalAvatarSession
    from live.avatar.face import FaceRenderer
    from live.avatar.portrait import load_pack

    cfg = LiveKitServerConfig.on_free_ports(api_key=KEY, api_secret=SECRET)
    server = start_livekit_server(cfg)
    url = f"ws://127.0.0.1:{cfg.port}"

    def tok(identity: str, agent: bool = False) -> str:
        t = (api.AccessToken(KEY, SECRET).with_identity(identity)
             .with_grants(api.VideoGrants(room_join=True, room="lipsync")))
        return (t.with_kind("agent") if agent else t).to_jwt()

    x0, y0, x1, y1 = FaceRenderer(load_pack(), width=SIZE, height=SIZE).mouth_box()
    audio: list[tuple[float, np.ndarray]] = []
    video: list[tuple[float, np.ndarray]] = []  # (due on screen, 256 px RGB)
    dark: list[tuple[float, float]] = []
    late: list[tuple[float, float]] = []  # (shown, arrival - shown): this process's own delay
    tasks: list[asyncio.Task[None]] = []
    both = asyncio.Event()
    kinds: set[int] = set()

    async def pump_audio(track: rtc.Track) -> None:
        async for ev in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            audio.append((time.monotonic(), np.frombuffer(ev.frame.data, np.int16).copy()))

    async def pump_video(track: rtc.Track) -> None:
        async for ev in rtc.VideoStream(track, format=rtc.VideoBufferType.RGB24):
            now = time.monotonic()
            shown = ev.timestamp_us / 1e6
            shown = shown if abs(shown - now) < 1.0 else now
            late.append((shown, now - shown))
            f = ev.frame
            img = np.frombuffer(f.data, np.uint8).reshape(f.height, f.width, 3)
            luma = img[y0:y1, x0:x1].astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                                                   np.float32)
            dark.append((shown, float((luma < 80).mean())))
            video.append((shown, cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)))

    def on_sub(track: rtc.Track, *_: object) -> None:
        kinds.add(track.kind)
        pump = pump_audio if track.kind == rtc.TrackKind.KIND_AUDIO else pump_video
        tasks.append(asyncio.create_task(pump(track)))
        if len(kinds) == 2:
            both.set()

    agent, user = rtc.Room(), rtc.Room()
    avatar = LocalAvatarSession(options=LocalAvatarOptions(seed=3, width=SIZE, height=SIZE,
                                                          mouth_lead=lead))
    out_rows: list[dict[str, float | None]] = []
    try:
        await agent.connect(url, tok("agent", agent=True))
        user.on("track_subscribed", on_sub)
        await user.connect(url, tok("user"))
        if with_mic:  # like a caller: the subscriber also publishes a (silent) microphone
            mic = rtc.AudioSource(48000, 1, queue_size_ms=50)
            await user.local_participant.publish_track(
                rtc.LocalAudioTrack.create_audio_track("mic", mic),
                rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))

            async def silence() -> None:
                frame = rtc.AudioFrame(bytes(960), 48000, 1, 480)
                while True:
                    await mic.capture_frame(frame)

            tasks.append(asyncio.create_task(silence()))
        session: AgentSession[None] = AgentSession()  # no models: audio is played directly
        await avatar.start(session, room=agent)
        out = session.output.audio
        assert out is not None
        await asyncio.wait_for(both.wait(), 30)
        finished = asyncio.Event()

        def on_finished(_ev: PlaybackFinishedEvent) -> None:
            finished.set()

        out.on("playback_finished", on_finished)
        await asyncio.sleep(1.5)  # record a second and a half of the idle face
        ref = np.median(np.stack([_gray(i) for _, i in video[-25:]]), axis=0)
        for _ in range(repeats):
            finished.clear()
            jb0 = await _jitter_buffers(user)
            t0 = time.monotonic()
            for timings, pcm in sentences:
                avatar.alignment_callback(timings, pcm.size, sr)
                for i in range(0, pcm.size, sr // 50):
                    part = pcm[i:i + sr // 50]
                    await out.capture_frame(rtc.AudioFrame(part.tobytes(), sr, 1, part.size))
            out.flush()
            await asyncio.wait_for(finished.wait(), 60)
            await asyncio.sleep(0.8)  # the reply's last sound and frames still arriving
            t1 = time.monotonic()
            jb1 = await _jitter_buffers(user)
            frames = [(t, img) for t, img in video if t0 <= t <= t1]
            caller = lip_offset(audio, frames, ref, t0, t1)
            # the check: the known mouth box's dark share as the mouth signal
            at, av = _audio_envelope(audio, t0, t1)
            dt = np.asarray([t for t, _ in dark if t0 <= t <= t1])
            dv = np.asarray([v for t, v in dark if t0 <= t <= t1])
            grid = np.arange(t0, t1, 0.005)
            idx = [np.clip(np.searchsorted(dt, grid + lag, side="right") - 1, 0, dt.size - 1)
                   for lag in np.arange(-0.3, 0.6001, 0.005)]
            lag_a = np.interp(grid, at, av)
            box_lag, box_r = _xcorr_lag_held(lag_a, [dv[i] for i in idx])
            arrival = [(t + d, img) for (t, img), (_, d) in zip(video, late, strict=True)
                       if t0 <= t <= t1]
            by_arrival = lip_offset(audio, arrival, ref, t0, t1)
            arr = np.asarray([t for t, _ in audio])
            cum = np.concatenate([[0.0], np.cumsum([x.size for _, x in audio[:-1]])]) / 48000
            base = arr - cum
            backlog = base - np.minimum.accumulate(base[::-1])[::-1]
            win = (arr >= t0) & (arr <= t1)
            out_rows.append({
                "subscriber_audio_backlog_ms": round(1000 * float(np.median(backlog[win])), 1),
                "subscriber_audio_jitter_buffer_ms": _jb_ms(jb0, jb1, "audio"),
                "subscriber_video_jitter_buffer_ms": _jb_ms(jb0, jb1, "video"),
                "video_arrival_minus_render_time_ms": round(
                    1000 * float(np.median([d for t, d in late if t0 <= t <= t1])), 1),
                "offset_by_frame_arrival_s": by_arrival[0] if by_arrival else None,
                "caller_offset_s": caller[0] if caller else None,
                "caller_r": caller[1] if caller else None,
                "mouth_box_offset_s": box_lag, "mouth_box_r": box_r,
            })
            print(json.dumps(out_rows[-1]), flush=True)
    finally:
        for t in tasks:
            t.cancel()
        await avatar.aclose()
        await user.disconnect()
        await agent.disconnect()
        stop_process(server)
    return out_rows


async def _jitter_buffers(room: Any) -> dict[str, tuple[float, int]]:
    """Subscriber's jitter buffer totals per kind: (seconds of delay summed, items emitted)."""
    stats = await room.get_rtc_stats()
    if os.environ.get("LIPSYNC_DEBUG"):
        print({st.WhichOneof("stats") for st in [*stats.subscriber_stats, *stats.publisher_stats]})
    out: dict[str, tuple[float, int]] = {}
    for st in [*stats.subscriber_stats, *stats.publisher_stats]:
        if st.WhichOneof("stats") == "inbound_rtp":
            inb = st.inbound_rtp
            out[str(inb.stream.kind).lower()] = (inb.inbound.jitter_buffer_delay,
                                    inb.inbound.jitter_buffer_emitted_count)
    return out


def _jb_ms(before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]],
           kind: str) -> float | None:
    """Mean jitter buffer delay (ms) of what was played between two readings."""
    if kind not in before or kind not in after:
        return None
    n = after[kind][1] - before[kind][1]
    return round(1000 * (after[kind][0] - before[kind][0]) / n, 1) if n > 0 else None


def _xcorr_lag_held(a: np.ndarray, shifted: list[np.ndarray]) -> tuple[float, float]:
    """Best of the video signals held at lags -0.3..0.6 s in 5 ms steps against ``a``."""
    az = (a - a.mean()) / (a.std() + 1e-9)
    rs = [float(np.mean(az * (v - v.mean()) / (v.std() + 1e-9))) for v in shifted]
    k = int(np.argmax(rs))
    return round(-0.3 + 0.005 * k, 3), round(rs[k], 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--load", type=int, default=0, metavar="N")
    ap.add_argument("--lead", type=float, default=None, metavar="MS",
                    help="mouth lead (ms) instead of the default")
    ap.add_argument("--name", default="lipsync")
    ap.add_argument("--mic", action="store_true",
                    help="the subscriber also publishes a microphone, as a caller does")
    args = ap.parse_args()
    if os.environ.get("AVATAR_NETNS") != "1":
        netns = str(ROOT / "scripts" / "netns-run")
        os.execv(netns, [netns, sys.executable, "-m", "bench.lipsync", *sys.argv[1:]])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.call import _busy_loops, _median, _p95
    from live.avatar.publish import DEFAULT_VIDEO_LEAD_S

    lead = DEFAULT_VIDEO_LEAD_S if args.lead is None else args.lead / 1000.0
    sentences, sr = speech()
    res: dict[str, Any] = {
        "command": ".venv/bin/python -m bench.lipsync " + " ".join(sys.argv[1:]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_at_start": os.getloadavg(),
        "busy_loop_processes": args.load,
        "mouth_lead_s": lead,
        "generator": {
            "audio_only": asyncio.run(generator_stage(sentences, sr, aligned=False)),
            "phoneme_timings": asyncio.run(generator_stage(sentences, sr, aligned=True)),
        },
    }
    loaders = _busy_loops(args.load)
    try:
        rows = asyncio.run(room_stage(sentences, sr, args.repeats, lead, args.mic))
    finally:
        for p in loaders:
            p.kill()
            p.wait()
    caller = [r["caller_offset_s"] for r in rows if r["caller_offset_s"] is not None]
    box = [r["mouth_box_offset_s"] for r in rows if r["mouth_box_offset_s"] is not None]
    res["room"] = {
        "repeats": rows,
        "caller_offset_s": {"p50": _median(caller), "p95": _p95(caller)},  # type: ignore[arg-type]
        "mouth_box_offset_s": {"p50": _median(box), "p95": _p95(box)},  # type: ignore[arg-type]
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    g, r = res["generator"], res["room"]
    md = [
        "# Lip sync, stage by stage",
        "",
        f"Command: `{res['command']}` ({res['when']}; {res['machine']}, load average at start "
        f"{res['load_average_at_start'][0]:.1f}"
        + (f", {args.load} busy-looping processes" if args.load else "") + "; shared machine).",
        f"Mouth lead: {lead * 1000:.0f} ms. Offsets are mouth minus sound: positive = sound first.",
        "",
        "| stage | offset | r |",
        "| --- | --- | --- |",
        f"| generator, audio only | {g['audio_only']['offset_s'] * 1000:+.0f} ms | "
        f"{g['audio_only']['r']} |",
        f"| generator, phoneme timings | {g['phoneme_timings']['offset_s'] * 1000:+.0f} ms | "
        f"{g['phoneme_timings']['r']} |",
    ]
    for i, row in enumerate(rows, 1):
        c = row["caller_offset_s"]
        md.append(f"| room, subscriber, repeat {i} (caller's measure / known mouth box) | "
                  f"{'none' if c is None else f'{c * 1000:+.0f} ms'} / "
                  f"{row['mouth_box_offset_s'] * 1000:+.0f} ms | "  # type: ignore[operator]
                  f"{row['caller_r']} / {row['mouth_box_r']} |")
    md += ["", f"Room, caller's measure: p50 {r['caller_offset_s']['p50']} s, "
               f"p95 {r['caller_offset_s']['p95']} s.", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
