"""Load: N concurrent calls against one live worker on this machine.

    scripts/netns-run .venv/bin/python -m bench.load --profile hosted --n 1,2,5,10,20,50
    scripts/netns-run .venv/bin/python -m bench.load --profile local --n 1,2,5 --turns 3

Starts the embedded stack (livekit-server, Valkey, SQLite, ONE live worker with its session
cap raised to the largest N) and, for each N, runs N callers at once in this process: the
project's caller (`cli.call.run_call`) in its light mode, which listens to the audio and
subscribes to the video of only ``--video-callers`` of them, converting one frame in five.
Profiles:

- ``hosted``: STT, LLM and TTS are the wire-protocol fakes (`fakes/`: AssemblyAI, OpenAI,
  Cartesia) taking a vendor's time (``--latencies``), and the avatar is the Tavus fake, whose
  avatar participant (25 fps, 320x240) joins each room. The fakes run in a process of their own.
- ``hosted-speech-local-face``: the same fakes, and the CPU face rendered in the worker.
- ``local``: the embedded default (Whisper, SmolLM2, Piper, the CPU face).

Per N: the latency the product adds on top of what the configuration forces (defined in the
results file), failed and declined sessions, the worker's CPU and memory (psutil over its
process tree), delivered video fps, and the CPU of the callers, the fakes and livekit-server
apart. A profile stops after an N that clearly fails. Writes bench/results/load-<profile>.json
and .md. Each N takes about 20 s plus 8 s a turn, plus the sessions' start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PROFILES = ("hosted", "hosted-speech-local-face", "local")
# The fake LLM's answer: the first sentence is what the TTS must have before its first audio.
REPLY = "Sure, I can help you with that. Here is a short answer, and then I will listen again."
FIRST_SENTENCE_TOKENS = len("Sure, I can help you with that.".split())
TARGET_ADDED_P95_S = 0.150
TARGET_FPS = 24.0


@dataclass
class Latencies:
    """What the fakes take, as a vendor would."""

    stt_final_s: float = 0.150  # the final transcript, after the end of the speech
    llm_first_token_s: float = 0.300
    llm_tokens_per_s: float = 50.0
    tts_first_byte_s: float = 0.150

    @classmethod
    def parse(cls, text: str) -> Latencies:
        """``stt=0.15,llm=0.3,tps=50,tts=0.15`` (any subset; seconds, tokens a second)."""
        names = {"stt": "stt_final_s", "llm": "llm_first_token_s", "tps": "llm_tokens_per_s",
                 "tts": "tts_first_byte_s"}
        out = cls()
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            if key not in names:
                raise argparse.ArgumentTypeError(
                    f"--latencies: unknown {key!r} (use {', '.join(names)})")
            try:
                setattr(out, names[key], float(value))
            except ValueError:
                raise argparse.ArgumentTypeError(f"--latencies: {key}={value!r} is not a number") from None
        if out.llm_tokens_per_s <= 0:
            raise argparse.ArgumentTypeError("--latencies: tps must be above 0")
        return out

    def flag(self) -> str:
        return (f"stt={self.stt_final_s:g},llm={self.llm_first_token_s:g},"
                f"tps={self.llm_tokens_per_s:g},tts={self.tts_first_byte_s:g}")


def floor_s(profile: str, lat: Latencies, endpointing_s: float, preemptive: bool) -> float:
    """The heard latency the configuration alone forces (see the results file's definition)."""
    if profile == "local":
        return endpointing_s
    speech = (lat.llm_first_token_s + FIRST_SENTENCE_TOKENS / lat.llm_tokens_per_s
              + lat.tts_first_byte_s)
    if preemptive:  # the reply is prepared from the final transcript during the endpointing wait
        return max(endpointing_s, lat.stt_final_s + speech)
    return max(endpointing_s, lat.stt_final_s) + speech


# ------------------------------------------------------------------------------ the fakes


async def _serve_fakes(lat: Latencies, size: tuple[int, int]) -> None:
    """Run the four fakes until stdin closes; print where they are as one JSON line."""
    import functools

    from fakes.assemblyai_server import AssemblyAIFake
    from fakes.avatar_worker import FakeAvatarWorker
    from fakes.cartesia_server import CartesiaFake
    from fakes.openai_server import OpenAIFake
    from fakes.tavus_server import TavusFake

    stt = AssemblyAIFake(transcript="what can you help me with today",
                         final_after_silence_s=lat.stt_final_s)
    llm = OpenAIFake(reply=lambda _m: REPLY, first_token_s=lat.llm_first_token_s,
                     tokens_per_s=lat.llm_tokens_per_s)
    tts = CartesiaFake(first_byte_s=lat.tts_first_byte_s)
    w, h = size
    avatar = TavusFake(make_worker=functools.partial(FakeAvatarWorker, fps=25, width=w, height=h))
    async with stt, llm, tts, avatar:
        print(json.dumps({
            "stt": [stt.base_url, stt.api_key], "llm": [llm.base_url, llm.api_key],
            "tts": [tts.base_url, tts.api_key], "avatar": [avatar.api_url, avatar.api_key],
        }), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def start_fakes(lat: Latencies, size: tuple[int, int], log: Path
                ) -> tuple[subprocess.Popen[str], dict[str, list[str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.load", "--serve-fakes", "--latencies", lat.flag(),
         "--fake-avatar-size", f"{size[0]}x{size[1]}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True,
        start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        sys.exit(f"the fakes did not start; see {log}")
    return proc, json.loads(line)


def worker_env(profile: str, fakes: dict[str, list[str]] | None, cap: int) -> dict[str, str]:
    env = {"LIMITS__MAX_CONCURRENT_SESSIONS": str(cap), "LIMITS__IDLE_TIMEOUT_SECONDS": "120"}
    if profile == "local":
        return env
    assert fakes is not None
    env.update({
        "STT__PROVIDER": "assemblyai", "STT__BASE_URL": fakes["stt"][0],
        "STT__API_KEY": fakes["stt"][1], "STT__FALLBACK": "none",
        "LLM__PROVIDER": "openai", "LLM__BASE_URL": fakes["llm"][0],
        "LLM__API_KEY": fakes["llm"][1], "LLM__MODEL": "fake-gpt", "LLM__FALLBACK": "none",
        "TTS__PROVIDER": "cartesia", "TTS__BASE_URL": fakes["tts"][0],
        "TTS__API_KEY": fakes["tts"][1], "TTS__MODEL": "sonic-2", "TTS__FALLBACK": "none",
    })
    if profile == "hosted":
        env.update({"AVATAR__PROVIDER": "tavus", "AVATAR__BASE_URL": fakes["avatar"][0],
                    "AVATAR__API_KEY": fakes["avatar"][1], "AVATAR__AVATAR_ID": "face-load",
                    "AVATAR__REPLICA_ID": "pal-load", "AVATAR__FALLBACK": "none"})
    else:
        env["AVATAR__PROVIDER"] = "local"
    return env


# ------------------------------------------------------------------------------ measuring


class TreeSampler:
    """CPU seconds and memory of process trees, sampled once a second in a thread."""

    def __init__(self, roots: dict[str, int], alone: tuple[str, ...] = ("callers",)) -> None:
        import psutil

        self._psutil = psutil
        self.roots = roots
        self.alone = alone  # the process itself, not its children (the callers started them all)
        self._last: dict[tuple[str, int], float] = {}
        self.cpu_s: dict[str, float] = dict.fromkeys(roots, 0.0)
        self.rss_peak: dict[str, int] = dict.fromkeys(roots, 0)
        self.procs_peak: dict[str, int] = dict.fromkeys(roots, 0)
        self.uss_peak: dict[str, int] = dict.fromkeys(roots, 0)
        # the worker's CPU seconds by thread name (Linux): Python, libwebrtc's threads, the FFI
        self.threads_s: dict[str, float] = {}
        self._last_thread: dict[tuple[int, int], float] = {}
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.uss_every = 5  # samples between USS readings (they read every mapping: slower)
        self._samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _tree(self, pid: int, name: str = "") -> list[Any]:
        try:
            root = self._psutil.Process(pid)
            return [root] if name in self.alone else [root, *root.children(recursive=True)]
        except self._psutil.NoSuchProcess:
            return []

    def sample(self) -> None:
        for name, pid in self.roots.items():
            rss = n = 0
            for p in self._tree(pid, name):
                try:
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    rss += p.memory_info().rss
                except self._psutil.NoSuchProcess:
                    continue
                n += 1
                if name == "worker":
                    self._threads(p.pid)
                key = (name, p.pid)
                self.cpu_s[name] += cpu - self._last.get(key, cpu)
                self._last[key] = cpu
            self.rss_peak[name] = max(self.rss_peak[name], rss)
            self.procs_peak[name] = max(self.procs_peak[name], n)
        self._samples += 1
        if "worker" in self.roots and self._samples % self.uss_every == 0:
            self.uss_peak["worker"] = max(self.uss_peak["worker"], self.uss("worker"))

    def _threads(self, pid: int) -> None:
        task_dir = Path(f"/proc/{pid}/task")
        try:
            tids = [int(t) for t in os.listdir(task_dir)]
        except OSError:
            return
        for tid in tids:
            try:
                comm = (task_dir / str(tid) / "comm").read_text().strip()
                fields = (task_dir / str(tid) / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self._tick
            comm = re.sub(r"\s*\d+$", "", comm) or "?"  # "worker_thread 0" -> "worker_thread"
            last = self._last_thread.get((pid, tid))
            self._last_thread[(pid, tid)] = cpu
            if last is not None:
                self.threads_s[comm] = self.threads_s.get(comm, 0.0) + cpu - last

    def uss(self, name: str) -> int:
        """Memory only this tree holds (no shared libraries counted twice), now."""
        total = 0
        for p in self._tree(self.roots[name]):
            try:
                total += p.memory_full_info().uss
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
        return total

    def start(self) -> None:
        self.sample()  # the baseline: CPU counts from here
        self.cpu_s = dict.fromkeys(self.roots, 0.0)
        self.rss_peak = dict.fromkeys(self.roots, 0)
        self.threads_s = {}

        def run() -> None:
            while not self._stop.wait(1.0):
                self.sample()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()


def _pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, -(-int(q) * len(ordered) // 100) - 1))], 3)


def _mib(b: float) -> float:
    return round(b / 2**20, 1)


async def _calls(settings: Any, n: int, wavs: list[Path], args: argparse.Namespace,
                 tag: str) -> list[Any]:
    from cli.call import CallOptions, run_call

    ramp = min(args.ramp, 0.5 * (n - 1))

    async def one(i: int) -> Any:
        await asyncio.sleep(ramp * i / max(1, n - 1))
        return await run_call(settings, CallOptions(
            room=f"{tag}-{i}", utterances=list(wavs), out_dir=Path("/nonexistent"),
            reply_timeout=args.reply_timeout, greeting_timeout=args.join_timeout,
            transcribe_replies=False, record=False, video=i < args.video_callers,
            video_keep_every=5))

    return list(await asyncio.gather(*(one(i) for i in range(n))))


STAGES = ("end_of_utterance_delay", "transcription_delay", "llm_ttft", "tts_ttfb",
          "avatar_first_frame", "e2e_latency")


def _stages(db_url: str, session_ids: list[str | None]) -> dict[str, float | None]:
    """The worker's own per-turn metrics (LiveKit's), medians over this step's sessions."""
    from sqlalchemy import select

    from store.db import session_scope
    from store.models import TurnMetric

    ids = [s for s in session_ids if s]
    with session_scope(db_url) as db:
        rows = db.scalars(select(TurnMetric).where(TurnMetric.session_id.in_(ids))).all()
        values = {k: [getattr(r, k) for r in rows if getattr(r, k) is not None] for k in STAGES}
    out = {k: _pct(v, 50) for k, v in values.items()}
    out["e2e_latency_p95"] = _pct(values["e2e_latency"], 95)
    return out


def worker_jobs(health_port: int) -> int | None:
    """The live worker's running jobs, from LiveKit Agents' own status page."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/worker", timeout=5) as r:
            return int(json.loads(r.read()).get("active_jobs", 0))
    except OSError:
        return None


def wait_worker_idle(health_port: int, timeout: float = 90.0) -> int | None:
    """Until the previous step's jobs have all ended (a finishing job still holds its slot
    under the cap, and the next step's calls would be declined for it)."""
    deadline = time.monotonic() + timeout
    while (jobs := worker_jobs(health_port)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs


def run_step(stack: Any, profile: str, n: int, wavs: list[Path], floor: float,
             args: argparse.Namespace, extra_roots: dict[str, int]) -> dict[str, Any]:
    from bench.stack import wait_room_empty, wait_session_ended

    leftover = wait_worker_idle(args.health_port)
    log = stack.work / "live.log"
    log_from = log.stat().st_size
    roots = {"worker": stack.processes["live"].pid, "livekit": stack.processes["livekit"].pid,
             "callers": os.getpid(), **extra_roots}
    sampler = TreeSampler(roots)
    idle_rss = sampler.uss("worker")
    sampler.start()
    t0 = time.monotonic()
    tag = f"load-{profile}-{n}-{int(time.time())}"
    results = asyncio.run(_calls(stack.settings, n, wavs, args, tag))
    wall = time.monotonic() - t0
    sampler.stop()
    busy_uss = max(sampler.uss_peak["worker"], idle_rss)
    for r in results:
        wait_session_ended(stack.db_url, r.session_id, timeout=30)
    for i in range(n):
        asyncio.run(wait_room_empty(stack.settings, f"{tag}-{i}", timeout=30))
    text = log.read_bytes()[log_from:].decode(errors="replace")
    declined = len(re.findall(r"declining job", text))
    heard = [t.audio_latency_s for r in results for t in r.turns if t.audio_latency_s is not None]
    added = [round(h - floor, 3) for h in heard]
    fps = [r.video_fps_decoded for r in results if r.video_fps_decoded is not None]
    fps_py = [r.video_fps for r in results if r.video_fps is not None]
    gaps = [r.video_max_gap_s for r in results if r.video_max_gap_s is not None]
    joins = [r.join_s for r in results if r.join_s is not None]
    failed = [r for r in results if not r.ok]
    step: dict[str, Any] = {
        "n": n,
        "wall_s": round(wall, 1),
        "sessions_ok": n - len(failed),
        "sessions_failed": len(failed),
        "errors": sorted({str(r.error) for r in failed})[:5],
        "declined_in_log": declined,
        "jobs_left_from_the_step_before": leftover,
        "turns_heard": len(heard),
        "turns_asked": n * len(wavs),
        "heard_s": {"p50": _pct(heard, 50), "p95": _pct(heard, 95), "max": max(heard, default=None)},
        "added_s": {"p50": _pct(added, 50), "p95": _pct(added, 95), "max": max(added, default=None)},
        "join_s": {"p50": _pct(joins, 50), "p95": _pct(joins, 95), "max": max(joins, default=None)},
        "video_callers": len(fps),
        "fps": {"mean": round(statistics.mean(fps), 2) if fps else None, "min": min(fps, default=None)},
        "fps_in_python": {"mean": round(statistics.mean(fps_py), 2) if fps_py else None,
                          "min": min(fps_py, default=None)},
        "worker_stage_p50_s": _stages(stack.db_url, [r.session_id for r in results]),
        "video_max_gap_s": max(gaps, default=None),
        "cpu_pct": {k: round(100 * v / wall, 1) for k, v in sampler.cpu_s.items()},
        "worker_cpu_pct_per_session": round(100 * sampler.cpu_s["worker"] / wall / n, 1),
        # where the worker's CPU goes, % of a core per session by thread name: "python" is the
        # interpreter (pipeline, VAD, face), the rest libwebrtc's and the SDK's native threads
        "worker_threads_pct_per_session": {
            k: round(100 * v / wall / n, 2)
            for k, v in sorted(sampler.threads_s.items(), key=lambda kv: -kv[1])[:8] if v > 0},
        "worker_rss_peak_mib": _mib(sampler.rss_peak["worker"]),
        "worker_processes_peak": sampler.procs_peak["worker"],
        "worker_uss_mib": {"idle": _mib(idle_rss), "busy": _mib(busy_uss),
                           "per_session": _mib((busy_uss - idle_rss) / n)},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "per_call": [{"room": r.room, "error": r.error, "join_s": r.join_s,
                      "heard_s": [t.audio_latency_s for t in r.turns],
                      "fps": r.video_fps_decoded, "fps_in_python": r.video_fps,
                      "max_gap_s": r.video_max_gap_s} for r in results],
    }
    # The callers' own process falling behind shows as a reply heard sooner than the floor
    # allows (its clock stamped the end of its speech late) or as long stalls in the video
    # its Python received while WebRTC decoded on time: then the step measured the callers.
    step["implausible_turns"] = sum(1 for h in heard if h < floor - 0.2)
    step["callers_overloaded"] = bool(
        step["implausible_turns"]
        or (fps and fps_py and statistics.mean(fps_py) < 0.6 * statistics.mean(fps)))
    step["holds"] = (
        not step["callers_overloaded"] and step["sessions_failed"] == 0 and declined == 0 and len(heard) == n * len(wavs)
        and step["added_s"]["p95"] is not None and step["added_s"]["p95"] <= TARGET_ADDED_P95_S
        and bool(fps) and min(fps) >= TARGET_FPS)
    step["clearly_fails"] = (
        len(failed) > max(1, n // 10) or (step["added_s"]["p95"] or 99) > 1.0
        or (bool(fps) and statistics.mean(fps) < 15))
    return step


def _print_step(profile: str, s: dict[str, Any]) -> None:
    if s["callers_overloaded"]:
        print(f"[{profile}] N={s['n']}: the callers' process fell behind (replies heard sooner "
              "than possible, or its video stalled): this step measured the callers too",
              flush=True)
    print(f"[{profile}] N={s['n']}: ok {s['sessions_ok']}/{s['n']}, declined {s['declined_in_log']}, "
          f"added p50 {s['added_s']['p50']} s p95 {s['added_s']['p95']} s, fps {s['fps']}, "
          f"worker CPU {s['cpu_pct']['worker']}% ({s['worker_cpu_pct_per_session']}%/session), "
          f"USS/session {s['worker_uss_mib']['per_session']} MiB, callers CPU "
          f"{s['cpu_pct']['callers']}%, holds {s['holds']}", flush=True)


def _questions(work: Path, turns: int) -> list[Path]:
    """Questions from the turn-taking corpus, a different voice each turn (none is the agent's
    own: a caller speaking with the agent's voice measures the agent, not its callers)."""
    from bench.turns.corpus import build, load_manifest

    rendered = build()
    by_voice: dict[str, list[Path]] = {}
    for it in load_manifest():
        # one clause each: the AssemblyAI fake ends a turn on silence, and a comma's pause is one
        if (it.kind == "complete" and it.split == "dev" and it.condition == "clean"
                and it.text.endswith("?") and "," not in it.text):
            by_voice.setdefault(it.voice, []).append(Path(rendered[it.id].path).resolve())
    voices = sorted(by_voice)
    if not voices:
        raise RuntimeError("the turn-taking corpus has no clean questions: python -m bench.turns.corpus")
    out = []
    for i in range(turns):
        clips = by_voice[voices[i % len(voices)]]
        out.append(clips[(i // len(voices)) % len(clips)])
    return out


def run_profile(profile: str, args: argparse.Namespace, fakes: dict[str, list[str]] | None,
                extra_roots: dict[str, int]) -> dict[str, Any]:
    from bench.stack import embedded_stack

    ns = sorted(args.n)
    env = worker_env(profile, fakes, cap=max(ns))
    env["LIMITS__PREEMPTIVE_TTS"] = "true" if args.preemptive else "false"
    env.update(args.env)  # the operator's variables last: a setting under test
    from cli.services import free_port

    args.health_port = free_port()
    env["LIVE_HEALTH_PORT"] = str(args.health_port)
    steps: list[dict[str, Any]] = []
    with embedded_stack(f"bench-load-{profile}", env) as stack:
        settings = stack.settings
        ep = settings.limits.endpointing_min_delay
        floor = floor_s(profile, args.latencies, ep, args.preemptive)
        wavs = _questions(stack.work, args.turns)
        if args.generator_cpus:
            os.sched_setaffinity(0, args.generator_cpus)
        for n in ns:
            step = run_step(stack, profile, n, wavs, floor, args, extra_roots)
            _print_step(profile, step)
            steps.append(step)
            # N = 1 is the lone caller every other step is compared with: never the last
            if step["clearly_fails"] and not args.keep_going and n != ns[0]:
                print(f"[{profile}] stops: N={n} clearly fails", flush=True)
                break
    lone = next((s["heard_s"]["p50"] for s in steps if s["n"] == 1), None)
    for s in steps:  # what load adds: heard latency over a lone caller's median, same run
        heard = [h for c in s["per_call"] for h in c["heard_s"] if h is not None]
        s["over_lone_s"] = ({"p50": _pct([h - lone for h in heard], 50),
                             "p95": _pct([h - lone for h in heard], 95)} if lone else None)
    held = [s["n"] for s in steps if s["holds"]]
    largest = None
    for s in steps:  # the largest N with every N up to it holding
        if not s["holds"]:
            break
        largest = s["n"]
    return {
        "profile": profile,
        "largest_n_that_holds": largest,
        "ns_that_hold": held,
        "floor_s": round(floor, 3),
        "endpointing_min_delay_s": ep,
        "preemptive": args.preemptive,
        "latencies": asdict(args.latencies) if profile != "local" else None,
        "fake_avatar_size": list(args.fake_avatar_size) if profile == "hosted" else None,
        "steps": steps,
    }


# ------------------------------------------------------------------------------ the report


def write_markdown(r: dict[str, Any], path: Path) -> None:
    lat = r["latencies"]
    if r["profile"] == "local":
        definition = (
            "nothing is simulated here (the models are the product), so added latency = heard "
            f"latency - the endpointing delay ({r['endpointing_min_delay_s']} s, "
            "`LIMITS__ENDPOINTING_MIN_DELAY`).")
    else:
        speech = (f"LLM first token {lat['llm_first_token_s']} s + the rest of its first "
                  f"sentence ({FIRST_SENTENCE_TOKENS} tokens at {lat['llm_tokens_per_s']:g}/s) "
                  f"+ TTS first byte {lat['tts_first_byte_s']} s")
        if r["preemptive"]:
            definition = (
                f"floor = max(endpointing delay {r['endpointing_min_delay_s']} s, STT final "
                f"{lat['stt_final_s']} s + {speech}): with preemptive generation on, the reply "
                "is prepared from the final transcript while the endpointing delay runs out.")
        else:
            definition = (
                f"floor = max(endpointing delay {r['endpointing_min_delay_s']} s, STT final "
                f"{lat['stt_final_s']} s) + {speech} (preemptive generation off: "
                "`LIMITS__PREEMPTIVE_TTS=false`, so the path is serial).")
    md = [
        f"# Load: concurrent sessions on one live worker, profile `{r['profile']}`",
        "",
        f"Command: `{r['command']}` ({r['when']}). Machine: {r['machine']}; load average "
        f"before the run {r['load_average_before']}.",
    ]
    if r.get("note"):
        md += ["", f"**{r['note']}**"]
    md += [
        "",
        f"**Largest N that holds** (p95 added latency <= {TARGET_ADDED_P95_S * 1000:.0f} ms, no "
        f"failed or declined session, >= {TARGET_FPS:g} fps at every caller that watched): "
        f"**{r['largest_n_that_holds']}** (of N = {', '.join(str(s['n']) for s in r['steps'])}).",
        "",
        "Definitions. *Heard latency*: at the caller, from the end of its own speech to the "
        "first audio of the reply (`cli.call`, one turn = one question). *Added latency* = "
        "heard latency - floor (*over a lone caller*: heard latency - the median heard by one "
        f"caller alone in the same run, N = 1), where the floor ({r['floor_s']} s) is what the "
        "configuration "
        "forces with an infinitely fast product: " + definition + " It includes the caller's "
        "own network and jitter buffer (tens of ms), the VAD's view of the end of speech, and "
        "for `hosted` the fake avatar's hop (data stream to its participant, which republishes "
        "the audio). *Failed*: a call that got no agent, or a turn with no reply within the "
        "reply timeout. *Declined*: the worker's `declining job` log lines. *CPU*: CPU seconds "
        "of each process tree over the step's wall time (100% = one core; this machine has "
        f"{os.cpu_count()}), from the first call's start to the last call's end, start-up "
        "included. *USS*: memory only the worker's tree holds (shared libraries once), idle "
        "before the step and at its peak during the calls (read every 5 s); per session = "
        "the difference / N. "
        "*fps*: video frames a second the watching callers' WebRTC stack decoded over the "
        "turns (its own threads; the frames that reached their Python, which a busy caller "
        "process drops, are listed below the table).",
        "",
        "| N | ok / failed / declined | turns heard | added p50 / p95 | over a lone caller p50 / p95 "
        "| heard p50 / p95 | join p50 / p95 "
        "| fps mean / min (callers watching) | longest video gap | worker CPU (per session) "
        "| worker RSS peak, processes | worker USS busy (per session) | callers CPU | fakes CPU "
        "| livekit CPU | load avg after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r["steps"]:
        cpu = s["cpu_pct"]
        md.append(
            f"| {s['n']} | {s['sessions_ok']} / {s['sessions_failed']} / {s['declined_in_log']} "
            f"| {s['turns_heard']} of {s['turns_asked']} "
            f"| {s['added_s']['p50']} / {s['added_s']['p95']} s "
            f"| {(s.get('over_lone_s') or {}).get('p50')} / {(s.get('over_lone_s') or {}).get('p95')} s "
            f"| {s['heard_s']['p50']} / {s['heard_s']['p95']} s "
            f"| {s['join_s']['p50']} / {s['join_s']['p95']} s "
            f"| {s['fps']['mean']} / {s['fps']['min']} ({s['video_callers']}) "
            f"| {s['video_max_gap_s']} s "
            f"| {cpu['worker']}% ({s['worker_cpu_pct_per_session']}%) "
            f"| {s['worker_rss_peak_mib']} MiB, {s['worker_processes_peak']} "
            f"| {s['worker_uss_mib']['busy']} MiB ({s['worker_uss_mib']['per_session']} MiB) "
            f"| {cpu['callers']}% | {cpu.get('fakes', '-')}{'%' if 'fakes' in cpu else ''} "
            f"| {cpu['livekit']}% | {s['load_average'][0]} |")
    md += ["", "The worker's own turn metrics (LiveKit's, medians; s): "
           "end of utterance delay / transcription delay / LLM first token / TTS first byte / "
           "avatar first frame / end to end:", ""]
    for s in r["steps"]:
        st = s.get("worker_stage_p50_s") or {}
        md.append(f"- N={s['n']}: " + " / ".join(str(st.get(k)) for k in STAGES)
                  + f"; end to end p95 {st.get('e2e_latency_p95')}"
                  + "; worker CPU per session by thread (% of a core): "
                  + ", ".join(f"{k} {v}" for k, v in (s.get("worker_threads_pct_per_session")
                                                       or {}).items())
                  + f"; frames reaching the callers' Python: {s.get('fps_in_python')}")
    behind = [str(s["n"]) for s in r["steps"] if s.get("callers_overloaded")]
    if behind:
        md += ["", f"**The callers' process fell behind at N = {', '.join(behind)}** (replies "
               "heard sooner than the floor allows, or the video its Python received far below "
               "what its WebRTC stack decoded): those rows measured the load generator as much "
               "as the worker. Pin it apart (`--generator-cpus`) or run it on another machine."]
    errors = sorted({e for s in r["steps"] for e in s["errors"]})
    if errors:
        md += ["", "Errors seen: " + "; ".join(f"`{e}`" for e in errors)]
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 160x120, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 16x16")
    return w, h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="hosted",
                    help=f"one or several, comma-separated: {', '.join(PROFILES)}")
    ap.add_argument("--n", default="1,2,5,10,20,50", help="concurrent calls per step")
    ap.add_argument("--turns", type=int, default=3, help="questions per call")
    ap.add_argument("--latencies", type=Latencies.parse, default=Latencies(),
                    help="the fakes' pace: stt=0.15,llm=0.3,tps=50,tts=0.15 (s; tokens/s)")
    ap.add_argument("--video-callers", type=int, default=4,
                    help="callers per step that subscribe to the video (fps); the rest listen")
    ap.add_argument("--ramp", type=float, default=5.0,
                    help="seconds over which a step's calls start (at most 0.5 s apart)")
    ap.add_argument("--preemptive", action=argparse.BooleanOptionalAction, default=True,
                    help="preemptive generation (LIMITS__PREEMPTIVE_TTS), on as shipped")
    ap.add_argument("--reply-timeout", type=float, default=30.0)
    ap.add_argument("--join-timeout", type=float, default=90.0)
    ap.add_argument("--generator-cpus", default="",
                    help="pin the callers (this process) to these CPUs, e.g. 1 (taskset)")
    ap.add_argument("--fake-avatar-size", type=_size, default=(160, 120), metavar="WxH",
                    help="the Tavus fake's video (25 fps): it stands for the vendor's cloud, so "
                         "it is kept small; its CPU is counted apart")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for the live worker (repeatable), e.g. "
                         "LIMITS__TURN_DETECTOR=smart-turn, to compare a change under load "
                         "(written to the results: no keys)")
    ap.add_argument("--keep-going", action="store_true",
                    help="run every N even after one clearly fails")
    ap.add_argument("--note", default="", help="a line for the results file (e.g. a dev run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="load", help="results file stem: NAME-<profile>.json/.md")
    ap.add_argument("--serve-fakes", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_fakes:
        asyncio.run(_serve_fakes(args.latencies, args.fake_avatar_size))
        return
    profiles = [p.strip() for p in args.profile.split(",") if p.strip()]
    for p in profiles:
        if p not in PROFILES:
            ap.error(f"--profile: unknown {p!r} (use {', '.join(PROFILES)})")
    try:
        args.n = [int(x) for x in args.n.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--n: expected numbers separated by commas, got {args.n!r}")
    if not args.n or min(args.n) < 1:
        ap.error("--n: every N must be at least 1")
    pairs = [e.partition("=") for e in args.env]
    if any(not name or not eq for name, eq, _ in pairs):
        ap.error("--env: expected NAME=VALUE")
    args.env = {name: value for name, _, value in pairs}
    args.generator_cpus = {int(c) for c in args.generator_cpus.split(",") if c.strip()}
    from bench.stack import require_netns

    require_netns()
    # SIGTERM unwinds like an exception, so the stack's servers and the fakes are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    before = [round(x, 2) for x in os.getloadavg()]
    with ExitStack() as stack:
        fakes = None
        extra: dict[str, int] = {}
        if any(p != "local" for p in profiles):
            work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-load-fakes-{os.getpid()}"
            work.mkdir(parents=True, exist_ok=True)
            proc, fakes = start_fakes(args.latencies, args.fake_avatar_size, work / "fakes.log")
            extra["fakes"] = proc.pid

            def stop_fakes(p: subprocess.Popen[str] = proc) -> None:
                from cli.services import stop_process

                if p.stdin:
                    p.stdin.close()
                stop_process(p, timeout=10)  # type: ignore[arg-type]

            stack.callback(stop_fakes)
        for profile in profiles:
            result = run_profile(profile, args, fakes, extra if profile != "local" else {})
            flags = [f"--profile {profile}", f"--n {','.join(map(str, sorted(args.n)))}",
                     f"--turns {args.turns}"]
            if profile != "local":
                flags.append(f"--latencies {args.latencies.flag()}")
            if not args.preemptive:
                flags.append("--no-preemptive")
            flags += [f"--env {k}={v}" for k, v in args.env.items()]
            if args.name != "load":
                flags.append(f"--name {args.name}")
            if args.video_callers != 4:
                flags.append(f"--video-callers {args.video_callers}")
            if profile == "hosted" and args.fake_avatar_size != (160, 120):
                flags.append("--fake-avatar-size {}x{}".format(*args.fake_avatar_size))
            result.update({
                "command": "scripts/netns-run .venv/bin/python -m bench.load " + " ".join(flags),
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "load_average_before": before,
                "note": args.note,
            })
            args.out.mkdir(parents=True, exist_ok=True)
            stem = f"{args.name}-{profile}"
            (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
            write_markdown(result, args.out / f"{stem}.md")


if __name__ == "__main__":
    main()
