"""End of turn offline, and the whole local voice pipeline in one AgentSession.

Speech synthesized by Piper goes in as microphone frames; Silero VAD, LiveKit's local
``v1-mini`` end-of-turn model, Whisper, SmolLM2 and Piper answer; the agent's audio is
captured and transcribed again. Nothing here has a network (run it under scripts/netns-run).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities

from bench.wer import normalize
from config.session import DEFAULT_INSTRUCTIONS
from config.settings import load_settings
from engines.piper import PiperEngine
from engines.whisper import WhisperEngine
from live.providers.local.turn_models import get_vad
from live.providers.registry import ProviderContext, create
from live.providers.turn import turn_handling
from tests.live.providers.speech import resample, silence, split_frames, wer

pytestmark = pytest.mark.slow


def test_turn_handling_is_offline_and_configurable(local_ctx: ProviderContext) -> None:
    from livekit.agents.inference.eot import TurnDetector

    from live.providers.local_stt import LocalSTT
    from live.providers.turn import SmartTurnDetector, TranscriptTurnDetector
    from live.providers.turn_lm import LanguageModelTurnDetector

    local_stt = LocalSTT(engine=None)  # type: ignore[arg-type]  # only its bookkeeping is used

    def handling(**limits: object) -> dict:
        settings = load_settings(_env_file=None, var_dir=local_ctx.settings.var_dir, limits=limits)
        return turn_handling(settings, local_ctx, stt=local_stt)

    default = handling()
    th = default["turn_handling"]
    # the measured default (bench/results/turns-endpoint.md, "In the room's terms")
    assert isinstance(th["turn_detection"], LanguageModelTurnDetector)
    # LiveKit's min delay is the sure wait (0.7 s); the detector waits its longer ones (0.8 s
    # for a turn that may end, 1.05 s for an unsure transcript) before its score lets it end
    assert th["endpointing"] == {"min_delay": 0.7, "max_delay": 1.3}
    assert th["preemptive_generation"] == {"enabled": True, "preemptive_tts": True}
    assert th["interruption"]["resume_false_interruption"] is False
    assert th["interruption"]["min_words"] == 1  # a backchannel alone does not stop the agent
    # one Silero model per process, shared by the session and the local STT (0.3 s for the
    # session was measured twice and did not shorten the pause after a backchannel)
    assert default["vad"] is get_vad(local_ctx)
    assert default["vad"].min_silence_duration == 0.55  # type: ignore[attr-defined]
    shorter = handling(vad_min_silence=0.3)["vad"]
    assert shorter is not default["vad"] and shorter.min_silence_duration == 0.3  # type: ignore[attr-defined]

    th = handling(endpointing_min_delay=0.4, endpointing_max_delay=2.0, preemptive_tts=False)
    assert th["turn_handling"]["endpointing"] == {"min_delay": 0.4, "max_delay": 2.0}
    assert th["turn_handling"]["preemptive_generation"]["preemptive_tts"] is False
    assert handling(turn_detector="vad")["turn_handling"]["turn_detection"] == "vad"
    assert isinstance(handling(turn_detector="transcript")["turn_handling"]["turn_detection"],
                      TranscriptTurnDetector)
    assert isinstance(handling(turn_detector="smart-turn")["turn_handling"]["turn_detection"],
                      SmartTurnDetector)
    mini = handling(turn_detector="v1-mini")["turn_handling"]["turn_detection"]
    assert isinstance(mini, TurnDetector)
    assert mini.model == "turn-detector-v1-mini"  # local, never the cloud v1


async def test_smart_turn_runs_as_a_livekit_streaming_turn_detector(
    local_ctx: ProviderContext, piper: PiperEngine
) -> None:
    """Smart Turn v3 through LiveKit's streaming detector contract, on 48 kHz frames as a room
    delivers them: a finished question scores above the threshold, the stream's answer is the
    model's own on the same audio, and new speech resolves a pending prediction as not done.
    (How well it separates finished from unfinished turns is measured in bench.turns, not here:
    on synthetic voices it often does not.)"""
    import numpy as np

    from live.providers.turn import SmartTurnDetector, get_smart_turn

    model = get_smart_turn(local_ctx)
    detector = SmartTurnDetector(model)
    sr = piper.sample_rate
    pcm = silence(0.3, sr)
    pcm += b"".join(c.pcm for c in piper.synthesize_sync("Could you tell me the opening hours on Saturday?"))
    pcm += silence(0.2, sr)
    stream = detector.stream()
    for frame in split_frames(resample(pcm, sr, 48000), ms=10):
        stream.push_audio(frame)
    ev = await asyncio.wait_for(stream.predict(), timeout=30)
    threshold = await stream.unlikely_threshold(None)
    assert threshold is not None and ev.end_of_turn_probability >= threshold
    direct = resample(pcm, sr, 16000)
    expected = model.predict(np.frombuffer(direct.data, dtype=np.int16).astype(np.float32) / 32768)
    assert abs(ev.end_of_turn_probability - expected) < 0.1

    fut = stream.predict()
    stream.cancel_inference()  # new speech: a pending prediction resolves as "not done"
    assert (await fut).end_of_turn_probability == 0.0
    await stream.aclose()


class MicInput(AudioInput):
    """Frames pushed by the test, as a participant's microphone track would deliver them."""

    def __init__(self) -> None:
        super().__init__(label="test-mic")
        self.queue: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()

    async def __anext__(self) -> rtc.AudioFrame:
        return await self.queue.get()


class Speaker(AudioOutput):
    """Records the agent's audio; 'plays' it instantly."""

    def __init__(self) -> None:
        super().__init__(label="test-speaker", capabilities=AudioOutputCapabilities(pause=False))
        self.frames: list[rtc.AudioFrame] = []
        self._position = 0.0
        self.finished = asyncio.Event()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if self._position == 0.0:
            self.on_playback_started(created_at=time.time())
        await super().capture_frame(frame)
        self.frames.append(frame)
        self._position += frame.duration

    def flush(self) -> None:
        super().flush()
        self.on_playback_finished(playback_position=self._position, interrupted=False)
        self._position = 0.0
        self.finished.set()

    def clear_buffer(self) -> None:
        self.on_playback_finished(playback_position=self._position, interrupted=True)
        self._position = 0.0


async def test_spoken_question_gets_a_spoken_answer_fully_offline(
    local_ctx: ProviderContext, piper: PiperEngine, whisper: WhisperEngine
) -> None:
    s = local_ctx.settings
    session = AgentSession(
        stt=create("stt", "local", s.stt, local_ctx),
        llm=create("llm", "local", s.llm, local_ctx),
        tts=create("tts", "local", s.tts, local_ctx),
        **turn_handling(s, local_ctx),
    )
    mic, speaker = MicInput(), Speaker()
    session.input.audio = mic
    session.output.audio = speaker
    transcripts: list[str] = []
    answered = asyncio.Event()
    session.on(
        "user_input_transcribed",
        lambda ev: transcripts.append(ev.transcript) if ev.is_final else None,
    )
    session.on(
        "conversation_item_added",
        lambda ev: answered.set() if getattr(ev.item, "role", None) == "assistant" else None,
    )
    question = "Hello, can you tell me your name please?"
    await session.start(Agent(instructions=DEFAULT_INSTRUCTIONS))
    try:
        pcm = silence(0.5, piper.sample_rate)
        pcm += b"".join(c.pcm for c in piper.synthesize_sync(question))
        pcm += silence(3.0, piper.sample_rate)
        for frame in split_frames(resample(pcm, piper.sample_rate, 48000), ms=10):
            mic.queue.put_nowait(frame)
        await asyncio.wait_for(answered.wait(), timeout=120)
        await asyncio.wait_for(speaker.finished.wait(), timeout=60)
    finally:
        await session.aclose()

    assert transcripts and wer(question, " ".join(transcripts)) <= 0.15, transcripts
    audio = rtc.combine_audio_frames(speaker.frames)
    assert audio.duration > 0.5 and audio.sample_rate == piper.sample_rate
    heard = (await create("stt", "local", s.stt, local_ctx).recognize(audio)).alternatives[0].text
    assert heard.strip(), "the agent's audio should contain speech"
    item = next(i for i in reversed(session.history.items) if getattr(i, "role", "") == "assistant")
    said = item.text_content or ""
    # the whole answer was played (Piper speaks about 0.32 s a word), and what Whisper tiny
    # hears in it is that answer: its words, not the same number of them (tiny drops or
    # misspells some: "I'm Bobo, ...", "I'm your friendly voice assistant.")
    assert audio.duration >= 0.25 * len(said.split()), (audio.duration, said)
    words = normalize(said)
    got = normalize(heard)
    assert len(got) >= 3 and sum(w in words for w in got) >= 0.6 * len(got), (said, heard)
