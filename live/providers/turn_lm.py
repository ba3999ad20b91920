"""Would a reader expect the caller to stop here? A small language model's answer.

LiveKit's own text turn detector scores P(end of message) with a fine-tuned SmolLM2; its
weights come from a model hub this deployment does not reach. The SmolLM2-135M-Instruct the
local agent already ships scores the same question without fine-tuning: after the caller's
words so far (closing marks removed, since Whisper adds them to fragments too), how likely is
the next token a sentence end or the end of the message? "Can you tell me" and "I'd like to
book" score near 0; "What time is it" (0.08) and "My name is Daniel Fischer" (0.46) well above. Measured on the
turn-taking corpus in ``bench.turns.endpoint`` (candidates "language model").

Misheard words mislead it: a robotic "Can you hear me?" that Whisper hears as "Can you bear
me" reads as a sentence that goes on, and the turn waited the max delay. With the local STT,
a transcript Whisper is unsure of (``LIMITS__TURN_UNSURE_CONFIDENCE``) waits
``LIMITS__ENDPOINTING_UNSURE_DELAY`` instead: still past a hesitation's pause, well short of
the max (candidates "language model + Whisper confidence"). And words it is sure end the turn
(``LIMITS__TURN_SURE_THRESHOLD``) wait ``LIMITS__ENDPOINTING_SURE_DELAY``, less than the min
delay (candidates "language model, sure").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from livekit.agents.language import LanguageCode
from livekit.agents.llm import ChatContext

from live.providers.turn_text import (
    HeardFinal,
    PendingSpeech,
    last_user_text,
    text_completeness,
    words_still_coming,
)

if TYPE_CHECKING:
    from engines.llama import LlamaEngine

logger = logging.getLogger(__name__)

PROMPT_HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
END_TOKENS = frozenset({".", "?", "!", "<|im_end|>"})
# A score normally takes 20-50 ms; one that is late (a busy machine) must not hold the turn:
# the turn then ends as the silence rule alone would end it.
SCORE_TIMEOUT = 0.3
# Speculative transcripts scored ahead and not yet asked for: a few, since the caller may go
# on (the speculation is dropped, its score never asked for).
PRESCORED_MAX = 4
_CLOSING = ".?!,;:…-–— \"'"


def _retrieve(future: asyncio.Future[float]) -> None:
    """A score nobody asked for (the caller went on) must not log its error as unretrieved."""
    if not future.cancelled():
        future.exception()


def end_prompt(text: str) -> str:
    """The model's input for the caller's words so far."""
    return PROMPT_HEAD + text.strip().strip('"').strip().rstrip(_CLOSING)


def end_probability(probs: dict[str, float]) -> float:
    """P(the turn ends here): the next token closes the sentence or the message."""
    return min(1.0, sum(p for tok, p in probs.items() if tok.strip() in END_TOKENS))


def score_sync(engine: LlamaEngine, text: str) -> float:
    """P(end) for ``text``; a transcript that trails off by the rule scores 0 at once."""
    if not text.strip():
        return 1.0
    if text_completeness(text) == "incomplete":
        return 0.0
    return end_probability(engine.next_token_probs_sync(end_prompt(text)))


class LanguageModelTurnDetector:
    """End of turn from the words by SmolLM2: LiveKit's text turn-detector contract.

    ``AgentSession`` calls ``predict_end_of_turn`` with the conversation; below
    ``threshold`` the turn waits the endpointing's max delay, otherwise its min delay. Works
    with any STT; the model runs on a small engine of its own, beside the agent's (a score in
    a slot of the agent's engine waited behind whole replies).

    With the local STT (``stt`` with ``last_final``) the turn has four waits, measured in
    ``bench.turns.endpoint``: ``sure_delay`` when the score is at least ``sure_threshold``,
    ``complete_delay`` when it is at least ``threshold``, ``unsure_delay`` below it when
    Whisper was unsure of the words (``unsure_confidence``), else the max delay. LiveKit knows
    two (its min delay, which is then ``sure_delay``, and its max): a wait between them is
    waited here, counted from the end of speech, and the score then lets the turn end at once.
    Speech that resumes cancels the prediction, and the wait with it.

    The local STT's speculative transcript (LiveKit's preflight, ``preflight_listeners``) is
    scored as it goes out, about 0.3 s before the final that ends the turn says the same
    words. Scored only when the final came, through the room it took 0.21 s (p50) on the busy
    cores, and the turn ended that much past its sure wait (bench/results/turn-prescore.md).
    The score reads the words alone, so one made early stays right for the same words later.
    """

    def __init__(self, engine: LlamaEngine, threshold: float, timeout: float = SCORE_TIMEOUT,
                 stt: PendingSpeech | None = None, *, unsure_confidence: float = 0.0,
                 unsure_delay: float = 0.0, sure_threshold: float = 1.0,
                 sure_delay: float = 0.0, complete_delay: float = 0.0) -> None:
        self._engine = engine
        self._threshold = threshold
        self._timeout = timeout
        self._stt = stt
        self._unsure_confidence = unsure_confidence
        self._unsure_delay = unsure_delay
        self._sure_threshold = sure_threshold
        self._complete_delay = complete_delay
        self._sure_delay = min(sure_delay, complete_delay)
        self._prescored: OrderedDict[str, asyncio.Future[float]] = OrderedDict()
        listeners = getattr(stt, "preflight_listeners", None)
        if isinstance(listeners, list):
            listeners.append(self.prescore)

    def prescore(self, text: str) -> None:
        """Start scoring ``text`` now: a prediction on the same words takes this score."""
        key = text.strip()
        if not key or key in self._prescored:
            return
        future = asyncio.ensure_future(self._engine.executor.run(score_sync, self._engine, key))
        future.add_done_callback(_retrieve)
        self._prescored[key] = future
        while len(self._prescored) > PRESCORED_MAX:
            self._prescored.popitem(last=False)

    async def _score(self, text: str) -> float:
        future = self._prescored.pop(text.strip(), None)
        if future is None:
            return await asyncio.wait_for(
                self._engine.executor.run(score_sync, self._engine, text), self._timeout)
        logger.debug("end-of-turn score taken from the speculative transcript",
                     extra={"ready": future.done()})
        return await asyncio.wait_for(asyncio.shield(future), self._timeout)

    @property
    def shortest_delay(self) -> float | None:
        """LiveKit's min delay for this detector (None: the configured one); the longer waits
        are waited by the detector. Only with the local STT, which tells when speech ended."""
        if self._stt is None or not hasattr(self._stt, "last_final"):
            return None
        return self._sure_delay if self._sure_delay < self._complete_delay else None

    @property
    def model(self) -> str:
        return f"{self._engine.model_name}-end-of-turn"

    @property
    def provider(self) -> str:
        return "local"

    async def unlikely_threshold(self, language: LanguageCode | None) -> float | None:
        return self._threshold

    async def supports_language(self, language: LanguageCode | None) -> bool:
        return language is None or str(language).lower().startswith("en")

    async def predict_end_of_turn(self, chat_ctx: ChatContext, *, timeout: float | None = None) -> float:
        if await words_still_coming(self._stt):
            return 0.0
        text = last_user_text(chat_ctx)
        if text is None:
            return 1.0
        heard = self._final_of(text)
        try:
            p = await self._score(text)
        except TimeoutError:
            logger.warning("end-of-turn score late: the silence rule ends the turn",
                           extra={"timeout": self._timeout})
            await self._wait(heard, self._complete_delay)
            return 1.0
        if p >= self._sure_threshold:
            return p  # LiveKit's min delay: the sure wait
        if p >= self._threshold:
            await self._wait(heard, self._complete_delay)
            return p
        if heard is not None and heard.confidence < self._unsure_confidence:
            logger.debug("transcript unsure: the turn waits the unsure delay", extra={
                "lk.pii.text": text, "confidence": round(heard.confidence, 3),
                "unsure_delay": self._unsure_delay})
            await self._wait(heard, self._unsure_delay)
            return 1.0
        return p

    async def _wait(self, heard: HeardFinal | None, delay: float) -> None:
        """Until ``delay`` s after the end of speech, when that is longer than LiveKit's own
        min delay (which it then waits from its own end of speech, by then past)."""
        shortest = self.shortest_delay
        if heard is None or delay <= (self._complete_delay if shortest is None else shortest):
            return
        await asyncio.sleep(max(0.0, heard.speech_end + delay - time.time()))

    def _final_of(self, text: str) -> HeardFinal | None:
        """The STT's last final, when it is the end of this transcript (not an earlier turn's)."""
        heard: HeardFinal | None = getattr(self._stt, "last_final", None)
        if heard is None or not text.strip().endswith(heard.text.strip()):
            return None
        return heard
