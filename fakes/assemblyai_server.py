"""AssemblyAI v3 universal streaming on 127.0.0.1, as livekit-plugins-assemblyai speaks it.

The plugin opens ``GET {base_url}/v3/ws?sample_rate=16000&encoding=pcm_s16le&speech_model=...``
with header ``Authorization: <key>``, streams binary PCM frames (50 ms each) and ends with the
text message ``{"type": "Terminate"}``. The server answers ``Begin`` (session id), ``Turn``
messages (``transcript``, ``words``, ``end_of_turn``) and, after Terminate, ``Termination``.

This fake says ``Begin`` on connect, and after every ``turn_audio_bytes`` of received audio a
partial ``Turn`` and a final one (``end_of_turn: true``) carrying ``transcript``. Failure modes:
``reject_status`` (refuse the websocket handshake), ``close_after_begin`` (drop the socket
right after Begin, like a crashed server), ``close_after_audio_bytes`` (drop it once that much
audio arrived, mid-utterance, before any final turn) and ``stall_after_audio_bytes`` (keep
reading audio but never answer again). The mid-stream modes hit the first ``fail_sockets``
sockets (``None``: all); with ``refuse_after_drop`` the server stays down after a drop (503
to every new socket), as a crashed vendor does.

With ``final_after_silence_s`` set (benchmarks), turns follow the speech instead of the byte
count, as the real service's end-of-turn model does: a partial once ``SPEECH_S`` of speech was
heard, and the final ``final_after_silence_s`` of received silence after the speech ended
(the audio arrives in real time, so that is also its delay in wall time).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from fakes._server import LoopbackServer

SPEECH_RMS = 300.0  # int16 RMS of a 50 ms chunk above which it counts as speech
SPEECH_S = 0.3  # speech heard before the partial transcript


def _rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


@dataclass
class AssemblyAISession:
    query: dict[str, str]
    authorization: str | None
    audio_bytes: int = 0
    control: list[dict[str, Any]] = field(default_factory=list)
    turns_sent: int = 0


@dataclass
class AssemblyAIFake(LoopbackServer):
    api_key: str = "aai-test-key-0123456789"
    transcript: str = "hello from the fake transcriber"
    turn_audio_bytes: int = 16000 * 2  # one second of 16 kHz s16le audio
    reject_status: int | None = None
    close_after_begin: bool = False
    close_after_audio_bytes: int | None = None
    stall_after_audio_bytes: int | None = None
    fail_sockets: int | None = None
    refuse_after_drop: bool = False
    final_after_silence_s: float | None = None
    dropped: bool = False
    sessions: list[AssemblyAISession] = field(default_factory=list)

    def __post_init__(self) -> None:
        LoopbackServer.__init__(self)

    @property
    def base_url(self) -> str:
        return self.ws_url

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v3/ws", self._ws)

    def _turn(self, order: int, sample_rate: int, *, final: bool) -> dict[str, Any]:
        words = self.transcript.split()
        duration_ms = 1000 * self.turn_audio_bytes // (2 * sample_rate)
        step = max(1, duration_ms // max(1, len(words)))
        timed = [
            {
                "start": i * step,
                "end": (i + 1) * step,
                "text": w,
                "confidence": 0.97,
                "word_is_final": final,
            }
            for i, w in enumerate(words if final else words[: max(1, len(words) // 2)])
        ]
        text = " ".join(str(t["text"]) for t in timed)
        return {
            "type": "Turn",
            "turn_order": order,
            "turn_is_formatted": False,
            "end_of_turn": final,
            "transcript": text,
            "end_of_turn_confidence": 0.9 if final else 0.1,
            "words": timed,
            "language_code": "en",
        }

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        session = AssemblyAISession(dict(request.query), request.headers.get("Authorization"))
        self.sessions.append(session)
        if session.authorization != self.api_key:
            return web.json_response({"error": "Invalid API key"}, status=401)
        if self.reject_status is not None or (self.refuse_after_drop and self.dropped):
            return web.json_response({"error": "unavailable"}, status=self.reject_status or 503)
        sample_rate = int(request.query.get("sample_rate", "16000"))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        started = time.time()
        await ws.send_json(
            {"type": "Begin", "id": str(uuid.uuid4()), "expires_at": int(started) + 3600}
        )
        if self.close_after_begin:
            await ws.close(code=1011, message=b"internal error")
            return ws
        faulty = self.fail_sockets is None or self.fail_sockets > 0
        if self.fail_sockets is not None:
            self.fail_sockets -= 1
        close_after = self.close_after_audio_bytes if faulty else None
        stall_after = self.stall_after_audio_bytes if faulty else None
        pending = 0
        speech = silence = 0  # bytes of the current utterance's speech, and of quiet after it
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                session.audio_bytes += len(msg.data)
                pending += len(msg.data)
                if close_after is not None and session.audio_bytes >= close_after:
                    self.dropped = True
                    await ws.close(code=1011, message=b"internal error")
                    break
                if stall_after is not None and session.audio_bytes >= stall_after:
                    self.stalled.set()
                    continue  # reads on, answers nothing
                if self.final_after_silence_s is not None:
                    bps = 2 * sample_rate
                    if _rms(msg.data) > SPEECH_RMS:
                        before, speech, silence = speech, speech + len(msg.data), 0
                        if before < SPEECH_S * bps <= speech:
                            order = session.turns_sent
                            await ws.send_json(self._turn(order, sample_rate, final=False))
                    elif speech:
                        silence += len(msg.data)
                        if silence >= self.final_after_silence_s * bps:
                            if speech >= SPEECH_S * bps:
                                order = session.turns_sent
                                await ws.send_json(self._turn(order, sample_rate, final=True))
                                session.turns_sent += 1
                            speech = silence = 0
                    continue
                if pending >= self.turn_audio_bytes:
                    pending -= self.turn_audio_bytes
                    order = session.turns_sent
                    await ws.send_json(self._turn(order, sample_rate, final=False))
                    await ws.send_json(self._turn(order, sample_rate, final=True))
                    session.turns_sent += 1
            elif msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                session.control.append(data)
                if data.get("type") == "Terminate":
                    await ws.send_json(
                        {
                            "type": "Termination",
                            "audio_duration_seconds": session.audio_bytes / (2 * sample_rate),
                            "session_duration_seconds": time.time() - started,
                        }
                    )
                    await ws.close()
                    break
        return ws
