"""Local avatar benchmark: render cost, achieved frame rate, CPU per avatar with encoding.

    .venv/bin/python -m bench.avatar [--seconds 20] [--width 512 --height 512 --fps 25]

Re-runs itself inside scripts/netns-run (WebRTC stays in a private network namespace). It
1. times ``FaceRenderer.render`` over varied mouth/blink/head states (median, p95);
2. starts a real livekit-server, runs the avatar as its own participant in a child process
   (``python -m live.avatar.runner``), has an agent participant stream Piper speech to it over
   LiveKit data streams and a subscriber receive its tracks, and reads the child's CPU time
   from /proc over the speaking window and over an idle window: that CPU is rendering plus
   VP8/Opus encoding plus the data-stream receive, i.e. the whole cost of one avatar.
Writes bench/results/avatar.json and bench/results/avatar.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY, SECRET = "benchkey", "bench-secret-0123456789abcdef0123456789abcdef"
TEXT = (
    "Hello! My name is Eileen. I flew the space shuttle, and today I would love to answer "
    "your questions about the mission and what it feels like to see the Earth from orbit."
)


def render_bench(width: int, height: int, n: int = 500) -> dict[str, float]:
    from live.avatar.face import FaceRenderer, FaceState
    from live.avatar.portrait import load_pack
    from live.avatar.visemes import MouthShape

    r = FaceRenderer(load_pack(), width=width, height=height)
    rng = np.random.default_rng(0)
    times = []
    for i in range(n):
        st = FaceState(
            MouthShape(
                float(rng.uniform(0, 1)), float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
            ),
            blink_l=1.0 if i % 25 == 0 else 0.0,
            blink_r=1.0 if i % 25 == 0 else 0.0,
            head_dx=float(rng.uniform(-2, 2)),
            head_dy=float(rng.uniform(-1, 1)),
            head_angle=float(rng.uniform(-0.006, 0.006)),
        )
        t = time.perf_counter()
        r.render(st)
        times.append((time.perf_counter() - t) * 1000)
    a = np.asarray(times[20:])
    return {
        "render_ms_median": round(float(np.median(a)), 3),
        "render_ms_p95": round(float(np.percentile(a, 95)), 3),
        "render_max_fps_one_core": round(1000.0 / float(np.median(a)), 1),
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def speech() -> tuple[np.ndarray, int]:
    """The agent's voice (whole-sentence Piper from the model store) saying TEXT."""
    from engines.piper import get_piper
    from engines.store import process_models

    voice = get_piper(process_models(), "joe-us", stream_vocoder=False)
    audio = np.concatenate([np.frombuffer(c.pcm, dtype=np.int16) for c in voice.synthesize_sync(TEXT)])
    return audio, voice.sample_rate


async def room_bench(width: int, height: int, fps: int, seconds: float) -> dict[str, Any]:
    from livekit import api, rtc
    from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
    from livekit.agents.voice.avatar import DataStreamAudioOutput

    from cli.services import LiveKitServerConfig, start_livekit_server, stop_process

    cfg = LiveKitServerConfig.on_free_ports(api_key=KEY, api_secret=SECRET)
    port = cfg.port
    server = start_livekit_server(cfg)
    url = f"ws://127.0.0.1:{port}"

    def tok(identity: str, *, agent: bool = False, attrs: dict[str, str] | None = None) -> str:
        t = (
            api.AccessToken(KEY, SECRET)
            .with_identity(identity)
            .with_grants(api.VideoGrants(room_join=True, room="bench"))
        )
        if agent:
            t = t.with_kind("agent")
        if attrs:
            t = t.with_attributes(attrs)
        return t.to_jwt()

    audio, sr = speech()
    stats = Path(f"/tmp/bench-avatar-{os.getpid()}.frames")

    def published() -> int:
        try:
            return int(stats.read_text())
        except (OSError, ValueError):
            return 0

    agent, user = rtc.Room(), rtc.Room()
    child: subprocess.Popen[bytes] | None = None
    frames: list[float] = []
    tasks: list[asyncio.Task[None]] = []
    got_video = asyncio.Event()

    async def count(stream: rtc.VideoStream) -> None:
        async for _ in stream:
            frames.append(time.monotonic())

    def on_sub(track: rtc.Track, *_: object) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            tasks.append(asyncio.create_task(count(rtc.VideoStream(track))))
            got_video.set()

    user.on("track_subscribed", on_sub)
    try:
        await agent.connect(url, tok("agent", agent=True))
        await user.connect(url, tok("user"))
        child = subprocess.Popen(  # noqa: ASYNC220 - started once, returns at once
            [
                sys.executable,
                "-m",
                "live.avatar.runner",
                "--url",
                url,
                "--token",
                tok("avatar", agent=True, attrs={ATTRIBUTE_PUBLISH_ON_BEHALF: "agent"}),
                "--width",
                str(width),
                "--height",
                str(height),
                "--fps",
                str(fps),
                "--stats",
                str(stats),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.wait_for(got_video.wait(), 60)
        out = DataStreamAudioOutput(
            agent, destination_identity="avatar", wait_remote_track=rtc.TrackKind.KIND_VIDEO
        )

        async def window(speaking: bool) -> dict[str, float]:
            n0, c0, t0 = len(frames), cpu_seconds(child.pid), time.monotonic()  # type: ignore[union-attr]
            p0 = published()
            if speaking:
                step = sr // 50
                # TTS runs ahead of playback: push one clip, then the next as it plays out
                while time.monotonic() - t0 < seconds:
                    for i in range(0, audio.size, step):
                        part = audio[i : i + step]
                        await out.capture_frame(rtc.AudioFrame(part.tobytes(), sr, 1, part.size))
                    out.flush()
                    await out.wait_for_playout()
            else:
                await asyncio.sleep(seconds)
            dt = time.monotonic() - t0
            cpu = cpu_seconds(child.pid) - c0  # type: ignore[union-attr]
            return {
                "seconds": round(dt, 1),
                "cpu_percent_of_one_core": round(100 * cpu / dt, 1),
                "subscriber_fps": round((len(frames) - n0) / dt, 1),
                # the stats file updates once a second: +-1 s of frames over the window
                "published_fps": round((published() - p0) / dt, 1),
            }

        idle = await window(False)
        talking = await window(True)
        return {"idle": idle, "speaking": talking}
    finally:
        for t in tasks:
            t.cancel()
        await user.disconnect()
        await agent.disconnect()
        if child is not None:
            child.terminate()
            child.wait(10)
        stop_process(server)
        stats.unlink(missing_ok=True)  # noqa: ASYNC240 - teardown, once


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--fps", type=int, default=25)
    args = p.parse_args()
    if os.environ.get("AVATAR_NETNS") != "1":
        os.execv(
            str(ROOT / "scripts" / "netns-run"),
            [
                str(ROOT / "scripts" / "netns-run"),
                sys.executable,
                "-m",
                "bench.avatar",
                *sys.argv[1:],
            ],
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res: dict[str, Any] = {
        "command": ".venv/bin/python -m bench.avatar " + " ".join(sys.argv[1:]),
        "size": f"{args.width}x{args.height}",
        "fps_target": args.fps,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load avg at start "
        f"{os.getloadavg()[0]:.1f}",
    }
    res.update(render_bench(args.width, args.height))
    res["room"] = asyncio.run(room_bench(args.width, args.height, args.fps, args.seconds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "avatar.json").write_text(json.dumps(res, indent=2) + "\n")
    r = res["room"]
    md = [
        "# Local avatar benchmark",
        "",
        f"Command: `{res['command']}` ({res['machine']}).",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| render ms/frame {res['size']} (median) | {res['render_ms_median']} |",
        f"| render ms/frame (p95) | {res['render_ms_p95']} |",
        f"| render-only max fps, one core | {res['render_max_fps_one_core']} |",
        f"| published fps, speaking (target {args.fps}) | {r['speaking']['published_fps']} |",
        f"| published fps, idle | {r['idle']['published_fps']} |",
        f"| subscriber fps, speaking (target {args.fps}) | {r['speaking']['subscriber_fps']} |",
        f"| subscriber fps, idle | {r['idle']['subscriber_fps']} |",
        f"| avatar process CPU, speaking (% of one core, incl. encoding) | "
        f"{r['speaking']['cpu_percent_of_one_core']} |",
        f"| avatar process CPU, idle (% of one core, incl. encoding) | "
        f"{r['idle']['cpu_percent_of_one_core']} |",
        "",
        "CPU is the avatar participant process (render + VP8/Opus encode + data-stream "
        "receive) read from /proc over each window; the machine is shared, so fps and CPU "
        "vary with its load.",
        "",
    ]
    (RESULTS / "avatar.md").write_text("\n".join(md))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
