"""Benchmark of the offline speech stack on this machine: `.venv/bin/python -m bench.speech`.

Measures, with every model loaded once in this process as a live worker would:
STT latency for ~1 s / 3 s / 8 s utterances (Whisper tiny.en), LLM time to first token and
tokens/s over a 5-turn conversation (SmolLM2-135M, first turn vs later turns), TTS time to
first audio and real-time factor (Piper, espeak-ng), and the process's memory (RSS).
Writes bench/results/speech.json and speech.md. Medians of several runs; the machine is
shared, so expect noise (the load average is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from livekit import rtc
from livekit.agents.llm import ChatContext

from bench.wer import wer
from config.session import DEFAULT_INSTRUCTIONS
from config.settings import load_settings
from engines.espeak import get_espeak
from engines.llama import get_llama
from engines.piper import get_piper
from engines.store import process_models
from engines.whisper import get_whisper
from live.providers.local.prewarm import prewarm
from live.providers.local_llm import LocalLLM
from live.providers.local_stt import LocalSTT
from live.providers.local_tts import EspeakTTS, LocalTTS
from live.providers.registry import ProviderContext

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = ".venv/bin/python -m bench.speech"
TARGETS = {
    "stt_3s_ms": 400,
    "llm_ttft_later_ms": 300,
    "tts_first_audio_ms": 150,
    "rss_all_models_mib": 1024,
}
UTTERANCES = {  # Piper at its native pace: about 1, 3 and 8 s of speech
    "1s": "Good morning to you.",
    "3s": "Could you tell me what the weather will be like in London tomorrow afternoon?",
    "8s": (
        "I would like to book a table for four people tomorrow evening at eight o'clock, "
        "preferably near the window, and please note that one of us is vegetarian."
    ),
}
CONVERSATION = [
    "Hi! Who are you?",
    "I am planning a trip to the seaside this weekend.",
    "What should I pack?",
    "Do you think it will be crowded?",
    "Thanks, that helps. Goodbye!",
]
TTS_TEXT = "Sure, I can help with that. The seaside is lovely at this time of year."
TTS_LONG_FIRST = (  # a long first sentence: the worst case for time to first audio
    "The seaside is lovely at this time of year, so bring a warm jacket for the evenings."
)


def memory_mib() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss": out["VmRSS"], "peak": out["VmHWM"]}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def pcm_to_frame(pcm: bytes, rate: int) -> rtc.AudioFrame:
    return rtc.AudioFrame(pcm, rate, 1, len(pcm) // 2)


async def bench_stt(ctx: ProviderContext, runs: int) -> dict[str, Any]:
    """Each utterance on the default 10 s window and on Whisper's 30 s, alternating runs."""
    piper = get_piper(ctx, "joe-us")
    engine = get_whisper(ctx, "tiny.en")
    modes = {
        "window_10s": LocalSTT(engine=engine, window_seconds=10.0),
        "window_30s": LocalSTT(engine=engine, window_seconds=30.0),
    }
    out: dict[str, Any] = {}
    for name, text in UTTERANCES.items():
        frame = pcm_to_frame(
            b"".join(c.pcm for c in piper.synthesize_sync(text)), piper.sample_rate
        )
        retries_before = engine.full_window_retries
        row: dict[str, Any] = {"audio_s": round(frame.duration, 2), "text": text}
        samples: dict[str, tuple[list[float], list[float], str]] = {
            mode: ([], [], "") for mode in modes
        }
        for stt in modes.values():
            await stt.recognize(frame)  # warm-up
        for _ in range(runs):
            for mode, stt in modes.items():
                t, c = time.perf_counter(), time.process_time()
                ev = await stt.recognize(frame)
                times, cpu, _ = samples[mode]
                times.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
                samples[mode] = (times, cpu, ev.alternatives[0].text)
        for mode, (times, cpu, transcript) in samples.items():
            row[mode] = {
                "latency_ms": median(times),
                "cpu_ms": median(cpu),
                "runs_ms": [round(x) for x in times],
                "transcript": transcript,
                "wer": round(wer(text, transcript), 3),
            }
        row["latency_ms"] = row["window_10s"]["latency_ms"]
        row["speedup"] = round(row["window_30s"]["latency_ms"] / row["latency_ms"], 2)
        row["full_window_retries"] = engine.full_window_retries - retries_before
        out[name] = row
    return out


async def bench_llm(ctx: ProviderContext, runs: int) -> dict[str, Any]:
    llm = LocalLLM(engine=get_llama(ctx, "smollm2-135m"), temperature=0.6)
    first_ttft: list[float] = []
    later_ttft: list[float] = []
    first_tps: list[float] = []
    later_tps: list[float] = []
    turns_log: list[dict[str, Any]] = []
    for run in range(runs):
        chat = ChatContext.empty()
        chat.add_message(role="system", content=DEFAULT_INSTRUCTIONS)
        for turn, user in enumerate(CONVERSATION):
            chat.add_message(role="user", content=user)
            t0 = time.perf_counter()
            t_first = t_last = 0.0
            text, completion = "", 0
            stream = llm.chat(chat_ctx=chat)
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    t_last = time.perf_counter()
                    t_first = t_first or t_last
                    text += chunk.delta.content
                if chunk.usage:
                    completion = chunk.usage.completion_tokens
            await stream.aclose()
            ttft = (t_first - t0) * 1000
            tps = (completion - 1) / (t_last - t_first) if t_last > t_first else 0.0
            (first_ttft if turn == 0 else later_ttft).append(ttft)
            (first_tps if turn == 0 else later_tps).append(tps)
            if run == 0:
                timings = stream.timings or {}
                turns_log.append(
                    {
                        "user": user,
                        "assistant": text.strip(),
                        "ttft_ms": round(ttft),
                        "prompt_evaluated": timings.get("prompt_n"),
                        "prompt_cached": timings.get("cache_n"),
                        "completion_tokens": completion,
                    }
                )
            chat.add_message(role="assistant", content=text.strip())
    return {
        "first_turn_ttft_ms": median(first_ttft),
        "later_turns_ttft_ms": median(later_ttft),
        "first_turn_tokens_per_s": median(first_tps),
        "later_turns_tokens_per_s": median(later_tps),
        "conversations": runs,
        "example_conversation": turns_log,
    }


async def _played(
    make_stream: Callable[[], Any], text: str, t0: float | None = None
) -> tuple[float, float, float, float]:
    """One streamed synthesis heard by a player that starts at the first audio and plays in
    real time: (time to first audio ms, total synthesis s, audio s, silence heard mid-answer
    ms). A gap is audio that arrived after the earlier audio had finished playing."""
    t0 = time.perf_counter() if t0 is None else t0
    stream = make_stream()
    stream.push_text(text)
    stream.end_input()
    first = deadline = gaps = audio = 0.0
    async for ev in stream:
        now = time.perf_counter()
        if not first:
            first = deadline = now
        gaps += max(0.0, now - deadline)
        deadline = max(deadline, now) + ev.frame.duration
        audio += ev.frame.duration
    total = time.perf_counter() - t0
    await stream.aclose()
    return (first - t0) * 1000, total, audio, gaps * 1000


async def bench_concurrent_tts(
    variants: dict[str, Callable[[], Any]], runs: int
) -> dict[str, Any]:
    """Two sessions answering at once through one process's voice (one shared model thread)."""
    texts = (TTS_TEXT, TTS_LONG_FIRST)
    firsts: dict[str, list[float]] = {name: [] for name in variants}
    gaps: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, make in variants.items():
            t0 = time.perf_counter()
            results = await asyncio.gather(*(_played(make, text, t0) for text in texts))
            firsts[name].append(max(r[0] for r in results))
            gaps[name].append(max(r[3] for r in results))
    return {
        name: {
            "slower_first_audio_ms": median(firsts[name]),
            "worst_mid_answer_silence_ms": median(gaps[name]),
        }
        for name in variants
    }


async def bench_tts(ctx: ProviderContext, runs: int) -> dict[str, Any]:
    """Piper with the vocoder streamed within sentences (default) and whole-sentence Piper
    side by side, alternating runs; espeak-ng for scale."""
    streamed = LocalTTS(engine=get_piper(ctx, "joe-us"))
    for text in (TTS_TEXT, TTS_LONG_FIRST):
        await _played(streamed.stream, text)
    # the production set of models has now done all its work: its memory peak, before the
    # comparison voice below is loaded
    memory = memory_mib()
    whole = LocalTTS(
        engine=get_piper(ctx, "joe-us", stream_vocoder=False)
    )
    espeak = EspeakTTS(engine=get_espeak(ctx))
    variants: dict[str, Callable[[], Any]] = {
        "piper": streamed.stream,
        "piper_whole_sentence": whole.stream,
        "espeak": lambda: _adapter(espeak),
    }
    out: dict[str, Any] = {}
    for text_name, text in (("two_sentences", TTS_TEXT), ("long_first_sentence", TTS_LONG_FIRST)):
        for make in variants.values():
            await _played(make, text)  # warm-up
        firsts: dict[str, list[float]] = {name: [] for name in variants}
        rtfs: dict[str, list[float]] = {name: [] for name in variants}
        audio_s = 0.0
        for _ in range(runs):
            for name, make in variants.items():
                first, total, audio_s, _ = await _played(make, text)
                firsts[name].append(first)
                rtfs[name].append(total / audio_s)
        out[text_name] = {
            "text": text,
            "audio_s": round(audio_s, 2),
            **{
                name: {
                    "first_audio_ms": median(firsts[name]),
                    "real_time_factor": round(statistics.median(rtfs[name]), 3),
                }
                for name in variants
            },
        }
    out["two_sessions_at_once"] = await bench_concurrent_tts(
        {"piper": streamed.stream, "piper_whole_sentence": whole.stream}, runs
    )
    out["sample_rate"] = streamed.sample_rate
    out["memory_mib_before_comparison"] = memory
    return out


def _adapter(tts: Any) -> Any:
    """Non-streaming TTS as AgentSession uses it: tts.StreamAdapter, sentence by sentence."""
    from livekit.agents import tts as lk_tts

    return lk_tts.StreamAdapter(tts=tts).stream()


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "os": platform.platform(),
    }


async def run(runs: int) -> dict[str, Any]:
    started = time.time()
    load_before = os.getloadavg()
    # the default var dir: Piper's aligned model is patched there once, as in production
    settings = load_settings(_env_file=None)
    ctx = process_models(settings)
    t = time.perf_counter()
    prewarm(ctx)
    get_espeak(ctx)
    load_s = time.perf_counter() - t
    mem_loaded = memory_mib()
    stt = await bench_stt(ctx, runs)
    llm = await bench_llm(ctx, max(2, runs // 2))
    tts = await bench_tts(ctx, runs)
    mem_end = tts.pop("memory_mib_before_comparison")
    result = {
        "command": COMMAND,
        "date": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
        "models": {
            "stt": "Whisper tiny.en (faster-whisper int8, 1 thread), 10 s encoder window",
            "llm": "SmolLM2-135M-Instruct Q4_1 (xllamacpp, 2 threads)",
            "tts": "Piper en_US joe medium (22.05 kHz); espeak-ng (piper's bundled library)",
            "vad_eot": "Silero VAD + LiveKit turn-detector-v1-mini (local)",
        },
        "load_all_models_s": round(load_s, 2),
        "memory_mib": {
            "rss_all_models_loaded": mem_loaded["rss"],
            "rss_after_benchmark": mem_end["rss"],
            "peak_rss": mem_end["peak"],
        },
        "stt": stt,
        "llm": llm,
        "tts": tts,
        "targets": TARGETS,
    }
    result["meets_targets"] = {
        "stt_3s": stt["3s"]["latency_ms"] <= TARGETS["stt_3s_ms"],
        "llm_ttft_later_turns": llm["later_turns_ttft_ms"] <= TARGETS["llm_ttft_later_ms"],
        "tts_first_audio": tts["two_sentences"]["piper"]["first_audio_ms"]
        <= TARGETS["tts_first_audio_ms"],
        "memory": mem_end["peak"] < TARGETS["rss_all_models_mib"],
    }
    return result


def to_markdown(r: dict[str, Any]) -> str:
    m, ok = r["machine"], r["meets_targets"]

    def mark(flag: bool) -> str:
        return "yes" if flag else "**no**"

    stt, llm, tts, mem = r["stt"], r["llm"], r["tts"], r["memory_mib"]
    lines = [
        "# Offline speech stack benchmark",
        "",
        f"Command: `{r['command']}` ({r['date']}, {r['runs']} runs per measure, medians).",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}.",
        f"Load average before/after: {r['load_average_before']} / {r['load_average_after']}: "
        "the machine is shared with other jobs, so figures are noisy. CPU time is the process's "
        "CPU seconds for the call (all threads): with 2 free cores, latency would be about half.",
        "",
        "| Measure | Result | Target | Met |",
        "|---|---|---|---|",
    ]
    for name in ("1s", "3s", "8s"):
        s = stt[name]
        target = f"<= {TARGETS['stt_3s_ms']} ms" if name == "3s" else ""
        met = mark(ok["stt_3s"]) if name == "3s" else ""
        w10, w30 = s["window_10s"], s["window_30s"]
        lines.append(
            f"| STT latency, {s['audio_s']} s utterance (Whisper tiny.en, 10 s window) "
            f"| {w10['latency_ms']} ms (CPU {w10['cpu_ms']} ms); 30 s window: "
            f"{w30['latency_ms']} ms, {s['speedup']}x slower; WER {w10['wer']} vs {w30['wer']}"
            f" | {target} | {met} |"
        )
    two, long = tts["two_sentences"], tts["long_first_sentence"]
    both = tts["two_sessions_at_once"]
    lines += [
        f"| LLM time to first token, first turn | {llm['first_turn_ttft_ms']} ms | | |",
        f"| LLM time to first token, turns 2-5 | {llm['later_turns_ttft_ms']} ms "
        f"| <= {TARGETS['llm_ttft_later_ms']} ms | {mark(ok['llm_ttft_later_turns'])} |",
        f"| LLM tokens/s, first turn / turns 2-5 | {llm['first_turn_tokens_per_s']} / "
        f"{llm['later_turns_tokens_per_s']} | | |",
        f"| TTS time to first audio, Piper, streamed vocoder ({two['audio_s']} s, 2 sentences) "
        f"| {two['piper']['first_audio_ms']} ms; whole-sentence Piper: "
        f"{two['piper_whole_sentence']['first_audio_ms']} ms "
        f"| <= {TARGETS['tts_first_audio_ms']} ms | {mark(ok['tts_first_audio'])} |",
        f"| TTS time to first audio, Piper, long first sentence ({long['audio_s']} s) "
        f"| {long['piper']['first_audio_ms']} ms; whole-sentence Piper: "
        f"{long['piper_whole_sentence']['first_audio_ms']} ms | | |",
        f"| TTS real-time factor, Piper streamed / whole-sentence "
        f"| {two['piper']['real_time_factor']} / {two['piper_whole_sentence']['real_time_factor']}"
        " | | |",
        "| TTS, two sessions answering at once (one voice, one model thread): slower first "
        "audio / worst silence inside an answer, streamed vs whole-sentence "
        f"| {both['piper']['slower_first_audio_ms']} / "
        f"{both['piper']['worst_mid_answer_silence_ms']} ms vs "
        f"{both['piper_whole_sentence']['slower_first_audio_ms']} / "
        f"{both['piper_whole_sentence']['worst_mid_answer_silence_ms']} ms | | |",
        f"| TTS time to first audio / RTF, espeak-ng | {two['espeak']['first_audio_ms']} ms / "
        f"{two['espeak']['real_time_factor']} | | |",
        f"| RSS with all models loaded (after load / peak) | {mem['rss_all_models_loaded']} / "
        f"{mem['peak_rss']} MiB | < {TARGETS['rss_all_models_mib']} MiB | {mark(ok['memory'])} |",
        f"| Time to load all models | {r['load_all_models_s']} s | | |",
        "",
        "Example conversation (first run, temperature 0.6):",
        "",
        "| User | Assistant | TTFT ms | prompt tokens evaluated / cached |",
        "|---|---|---|---|",
    ]
    for t in llm["example_conversation"]:
        answer = t["assistant"].replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {t['user']} | {answer} | {t['ttft_ms']} | "
            f"{t['prompt_evaluated']} / {t['prompt_cached']} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="repetitions per measure")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    result = asyncio.run(run(args.runs))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speech.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (args.out / "speech.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
