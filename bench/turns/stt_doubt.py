"""What a doubtful short-window guess is worth, against decoding it again on the full window.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.stt_doubt

The local STT decodes an utterance on a 10 s encoder window; a result that looks wrong
(``engines.whisper.short_window_doubt``: empty, token cap, compressible, unlikely, word rate,
repeats) is decoded again on Whisper's full 30 s window. Through a room that retry came 13
times in 60 turns (``turns-call-day1202-trace``) and put the speculative transcript at 1.0 to
1.35 s after the caller stopped instead of about 0.45 s. Is it worth it, per reason?

Every complete turn of the turn-taking corpus, and each hesitation turn's two parts and its
whole (the live STT hears all three), is decoded as the room delivers it (Opus at 32 kbit/s,
48 kHz, and back) and as rendered. Each doubted guess is decoded again on the full window.
Per reason: how many, the word error rate of the guess against the retry's, and the retry's
time. Then whole policies over all clips (retry every doubt, keep the guesses doubted for one
reason, keep every guess): word error rate and the time the retries cost. Chosen on ``dev``:
the policy with the fewest retries whose word error rate is at most half a point above
retrying every doubt; ``holdout`` and ``final`` are reported apart. Writes
``bench/results/turns-stt-doubt.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.turns.corpus import RATE, Item, build, load_manifest, read_wav
from bench.wer import edit_counts

RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.stt_doubt"
WINDOW = 10.0  # the live STT's default short window
OPUS_BITRATE = 32000
PATHS = ("room", "direct")
SPLITS = ("dev", "holdout", "final")


def _resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_out)
    frame = av.AudioFrame.from_ndarray(
        (np.clip(audio, -1, 1) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate_in
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in out]).astype(np.float32) / 32768.0


def opus_round_trip(audio: np.ndarray, bitrate: int = OPUS_BITRATE) -> np.ndarray:
    """16 kHz speech as a WebRTC caller sends it (Opus, 48 kHz, 20 ms frames) and back."""
    import av

    pcm = (np.clip(_resample(audio, RATE, 48000), -1, 1) * 32767).astype(np.int16)
    step = 960
    pcm = np.concatenate([pcm, np.zeros((-pcm.size) % step, np.int16)])
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = 48000, "mono", "s16", bitrate
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout = 48000, "mono"
    out: list[np.ndarray] = []

    def take(frame: av.AudioFrame | None) -> None:
        for packet in enc.encode(frame):
            for d in dec.decode(packet):
                a = d.to_ndarray().reshape(-1)
                out.append(a.astype(np.float32) / (32768.0 if a.dtype == np.int16 else 1.0))

    for i in range(0, pcm.size, step):
        frame = av.AudioFrame.from_ndarray(pcm[i:i + step].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, i
        take(frame)
    take(None)
    return _resample(np.concatenate(out), 48000, RATE)


def clips(items: list[Item]) -> Iterator[tuple[Item, str, str, np.ndarray]]:
    """(item, part, reference, 16 kHz audio): complete turns whole; hesitations cut at the
    pause (each side, as the VAD hands them over) and whole."""
    rendered = build()
    for it in items:
        r = rendered[it.id]
        audio, _ = read_wav(Path(r.path))

        def cut(a: float, b: float, audio: np.ndarray = audio) -> np.ndarray:
            return audio[int(max(0.0, a) * RATE): int(b * RATE)]

        whole = cut(r.speech_start - 0.1, r.speech_end + 0.2)
        if it.kind == "hesitation" and r.pause_start is not None and r.pause_end is not None:
            first, second = (p.strip() for p in it.text.split("|"))
            yield it, "first", first, cut(r.speech_start - 0.1, r.pause_start + 0.1)
            yield it, "second", second, cut(r.pause_end - 0.1, r.speech_end + 0.2)
            yield it, "whole", f"{first} {second}", whole
        else:
            yield it, "whole", it.text.replace("|", " "), whole


def run(model: str, limit: int | None) -> list[dict]:
    from config.settings import load_settings
    from engines.store import process_models
    from engines.whisper import FULL_WINDOW_SECONDS, get_whisper

    items = [i for i in load_manifest() if i.kind in ("complete", "hesitation")]
    if limit:
        items = items[:limit]
    engine = get_whisper(process_models(load_settings()), model)
    engine.transcribe_sync(np.zeros(RATE, np.float32), "en", WINDOW)  # warm-up
    rows: list[dict] = []
    for n, (it, part, ref, audio) in enumerate(clips(items)):
        for path in PATHS:
            clip = opus_round_trip(audio) if path == "room" else audio
            t0 = time.perf_counter()
            guess = engine.transcribe_sync(clip, "en", WINDOW, full_retry=False)
            took = time.perf_counter() - t0
            row = {"id": it.id, "part": part, "path": path, "split": it.split, "group": it.group,
                   "voice": it.voice, "seconds": round(clip.size / RATE, 2), "ref": ref,
                   "guess": guess.text, "guess_s": round(took, 4), "doubt": guess.doubt,
                   "guess_edits": edit_counts(ref, guess.text)[0],
                   "words": edit_counts(ref, "")[1]}
            if guess.doubt is not None:
                t0 = time.perf_counter()
                full = engine.transcribe_sync(clip, "en", FULL_WINDOW_SECONDS)
                row.update(full=full.text, full_s=round(time.perf_counter() - t0, 4),
                           full_edits=edit_counts(ref, full.text)[0])
            rows.append(row)
        if (n + 1) % 25 == 0:
            print(f"{n + 1} clips", flush=True)
    return rows


def policies(rows: list[dict]) -> dict[str, set[str]]:
    """Policy name -> the doubts it decodes again on the full window."""
    reasons = sorted({r["doubt"] for r in rows if r["doubt"]})
    out = {"retry every doubt (today)": set(reasons)}
    for reason in reasons:
        out[f"keep '{reason}' guesses"] = set(reasons) - {reason}
    out["keep every guess"] = set()
    return out


def score(rows: list[dict], retry: set[str]) -> dict:
    edits = words = retries = 0
    retry_s = 0.0
    for r in rows:
        again = r["doubt"] in retry
        edits += r["full_edits"] if again else r["guess_edits"]
        words += r["words"]
        retries += again
        retry_s += r["full_s"] if again else 0.0
    return {"clips": len(rows), "retries": retries, "retry_s": round(retry_s, 2),
            "wer": round(edits / max(1, words), 4)}


def by_reason(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for reason in sorted({r["doubt"] for r in rows if r["doubt"]}):
        mine = [r for r in rows if r["doubt"] == reason]
        words = sum(r["words"] for r in mine)
        out[reason] = {
            "n": len(mine),
            "guess_wer": round(sum(r["guess_edits"] for r in mine) / max(1, words), 4),
            "full_wer": round(sum(r["full_edits"] for r in mine) / max(1, words), 4),
            "full_better": sum(r["full_edits"] < r["guess_edits"] for r in mine),
            "full_worse": sum(r["full_edits"] > r["guess_edits"] for r in mine),
            "full_s_p50": round(float(np.median([r["full_s"] for r in mine])), 3),
        }
    return out


def summarize(rows: list[dict]) -> dict:
    pols = policies(rows)
    out: dict = {}
    for path in PATHS:
        mine = [r for r in rows if r["path"] == path]
        out[path] = {
            "reasons": by_reason(mine),
            "guess_s_p50": round(float(np.median([r["guess_s"] for r in mine])), 3),
            "policies": {
                name: {
                    **{s: score([r for r in mine if r["split"] == s], retry) for s in SPLITS},
                    **{g: score([r for r in mine if r["group"] == g], retry)
                       for g in sorted({r["group"] for r in mine})},
                    "all": score(mine, retry),
                }
                for name, retry in pols.items()
            },
        }
    # chosen on dev, through the room: fewest retries within half a point of retrying all
    dev = out["room"]["policies"]
    today = dev["retry every doubt (today)"]["dev"]["wer"]
    out["chosen"] = min((p for p in dev if dev[p]["dev"]["wer"] <= today + 0.005),
                        key=lambda p: (dev[p]["dev"]["retries"], dev[p]["dev"]["wer"]))
    return out


def render(meta: dict) -> str:
    s = meta["summary"]
    lines = [
        "# A doubtful short-window guess against the full-window retry (bench.turns.stt_doubt)", "",
        f"Command: `{meta['command']}` ({meta['date']}). Machine: {meta['machine']}, load average "
        f"{meta['load_average']}. Model: Whisper {meta['model']}, greedy, {WINDOW:g} s window. "
        "Clips: every complete turn of the corpus, and each hesitation turn's two parts and its "
        "whole; *room*: through Opus at 32 kbit/s and back, as a caller's audio reaches the agent; "
        "*direct*: as rendered.", "",
        f"Chosen on dev, through the room: **{s['chosen']}** (the fewest full-window retries with a "
        "word error rate at most half a point above retrying every doubt).", "",
        "Per reason for the doubt: the guess's word error rate against the retry's, over the "
        "doubted clips.", "",
        "| path | doubt | clips | guess WER | full-window WER | retry better / worse | retry p50 s |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in PATHS:
        for reason, r in s[path]["reasons"].items():
            lines.append(f"| {path} | {reason} | {r['n']} | {r['guess_wer']:.1%} | "
                         f"{r['full_wer']:.1%} | {r['full_better']} / {r['full_worse']} | "
                         f"{r['full_s_p50']} |")
    lines += ["", "Whole policies over all clips (WER over every clip; retries and the seconds "
              "they took):", "",
              "| path | policy | dev | holdout | final | natural | synthetic | human |",
              "|---|---|---|---|---|---|---|---|"]
    for path in PATHS:
        for name, p in s[path]["policies"].items():
            cells = [f"{p[k]['wer']:.1%}, {p[k]['retries']} ({p[k]['retry_s']} s)"
                     if k in p and p[k]["clips"] else "-"
                     for k in ("dev", "holdout", "final", "natural", "synthetic", "human")]
            mark = "**" if name == s["chosen"] and path == "room" else ""
            lines.append(f"| {path} | {mark}{name}{mark} | " + " | ".join(cells) + " |")
    lines += ["", f"A short-window guess took p50 {s['room']['guess_s_p50']} s (room) and "
              f"{s['direct']['guess_s_p50']} s (direct).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en", choices=("tiny.en", "base"))
    ap.add_argument("--limit", type=int, default=None, help="only the first N items (a quick look)")
    ap.add_argument("--from-json", type=Path, default=None, help="report a saved run again")
    args = ap.parse_args()
    if args.from_json:
        meta = json.loads(args.from_json.read_text())
        meta["summary"] = summarize(meta["rows"])
    else:
        rows = run(args.model, args.limit)
        meta = {"command": COMMAND + ("" if args.model == "tiny.en" else f" --model {args.model}")
                + (f" --limit {args.limit}" if args.limit else ""),
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "load_average": [round(x, 2) for x in os.getloadavg()], "model": args.model,
                "summary": summarize(rows), "rows": rows}
    stem = "turns-stt-doubt" + ("" if meta["model"] == "tiny.en" else f"-{meta['model']}")
    if "--limit" in meta["command"]:
        stem += "-quick"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(render(meta))
    print(render(meta))


if __name__ == "__main__":
    main()
