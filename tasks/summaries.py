"""Call summaries: short summary, key points, action items and caller sentiment.

A :class:`Summarizer` turns utterances into a :class:`SummaryResult`; tests inject their own.
The default works offline: the local SmolLM2-135M is too weak to extract facts reliably, so
key points (extractive), action items (commitment/request phrases) and sentiment (lexicon)
are heuristic, and only the one-paragraph summary is written by the model when it can be
loaded. With `LLM__PROVIDER=openai` every part comes from the OpenAI-compatible model
(map-reduce over chunks, JSON answers). `SummaryResult.sources` says which part came from where;
`Summary.model` records it as e.g. `smollm2-135m+heuristic`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from celery import shared_task
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.catalog import LLM_MODELS
from config.settings import LLMSettings, Settings
from engines.executors import CPU_THREADS
from engines.llama import LlamaOptions, get_llama, llama_available
from engines.store import ModelStore, process_models
from store.models import AgentSessionRecord, Summary, TranscriptLine, TranscriptReport
from tasks.base import AvatarTask, TransientError

logger = logging.getLogger(__name__)

Sentiment = Literal["positive", "neutral", "negative"]
HEURISTIC = "heuristic"
CHUNK_CHARS = 4000

_SENTENCE_SPLIT = re.compile(
    r"(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bMrs\.)(?<!\bSt\.)(?<!\bNo\.)(?<=[.!?])\s+"
)
_WORD = re.compile(r"[a-z']+")
# someone asks for something to be done ("please send...", "can you cancel...") or commits to
# doing it ("I'll send...", "we will call..."): only then is there an action item
_REQUEST = re.compile(
    r"\b(?:please|can you|could you|would you|will you|i need you to|i'd like you to|"
    r"i want you to|i would like you to|make sure|remember to)\b",
    re.IGNORECASE,
)
_COMMIT = re.compile(
    r"\b(?:i will|i'll|we will|we'll|i am going to|i'm going to|we are going to|we're going to|"
    r"let me|i can|we can)\b",
    re.IGNORECASE,
)
ACTION_VERBS = frozenset(
    "send call email mail text book cancel schedule reschedule fix repair refund deliver order "
    "reserve change update transfer arrange follow confirm forward ship replace return pick "
    "bring prepare set pay visit contact escalate file submit reset open close renew upgrade "
    "downgrade add remove move install activate deactivate register sign print post check "
    "look investigate charge credit issue note write draft review organise organize redirect "
    "block unblock deliver collect".split()
)
_WORD_AFTER = re.compile(r"[a-z']+")
STOP_MARKERS = frozenset("hear understand see tell say repeat explain be help".split())
STOPWORDS = frozenset(
    "a an the and or but if then so to of in on at for from by with about as is are was were be "
    "been being am do does did have has had i you he she it we they me him her us them my your "
    "our their this that these those there here what which who whom whose when where why how "
    "not no yes can could would should will shall may might must just very really also too "
    "okay ok oh um uh hi hello thanks thank please well like get got go going know think "
    "want let lets sure right now".split()
)
POSITIVE = frozenset(
    "good great excellent perfect wonderful awesome thanks thank appreciate helpful happy glad "
    "love nice fantastic amazing pleased resolved works working fixed brilliant satisfied "
    "easy clear".split()
)
NEGATIVE = frozenset(
    "bad terrible awful horrible angry annoyed frustrated frustrating upset disappointed "
    "disappointing broken problem problems issue issues wrong worse worst hate useless slow "
    "cancel complaint refund unacceptable ridiculous fail failed failing error down".split()
)
NEGATIONS = frozenset("not no never don't doesn't didn't isn't wasn't won't can't cannot".split())


@dataclass(frozen=True)
class Utterance:
    speaker: str  # user | agent
    text: str


@dataclass(frozen=True)
class SummaryResult:
    summary: str
    key_points: list[str]
    action_items: list[str]
    sentiment: Sentiment
    model: str
    sources: dict[str, str] = field(default_factory=dict)  # part -> model name | "heuristic"


class Summarizer(Protocol):
    """Turns a conversation into a :class:`SummaryResult`; must be deterministic for tests."""

    name: str

    def summarize(self, utterances: Sequence[Utterance]) -> SummaryResult: ...


# --------------------------------------------------------------------------- heuristics


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.strip()) if s.strip()]


_NUMBERISH = re.compile(r"\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|twelve|twenty)\b", re.I)
_NAME = re.compile(r"(?<!^)(?<![.!?]\s)\b[A-Z][a-z]+")


def _informative(sentence: str) -> list[str]:
    return [w for w in _WORD.findall(sentence.lower()) if w not in STOPWORDS]


def key_points(utterances: Sequence[Utterance], *, limit: int = 5) -> list[str]:
    """Extractive: the sentences that carry the call's facts, quoted with who said them.

    A sentence scores by its frequent content words, plus numbers (times, prices, dates),
    names, and requests or commitments; greetings and checks ("can you hear me?") have too
    few content words to count."""
    items = [(u.speaker, s) for u in utterances for s in sentences(u.text)]
    freq = Counter(w for _, s in items for w in _informative(s))
    scored: list[tuple[float, int, str, str]] = []
    for order, (speaker, s) in enumerate(items):
        words = _informative(s)
        if len(words) < 2:
            continue
        score = sum(freq[w] for w in set(words)) / (len(words) ** 0.5)
        score += 2.0 * bool(_NUMBERISH.search(s)) + 1.0 * bool(_NAME.search(s))
        score += 1.5 * _asks_for_action(s)
        scored.append((score, order, speaker, s))
    top = sorted(scored, key=lambda t: (-t[0], t[1]))[:limit]
    seen: set[str] = set()
    out: list[str] = []
    for _, _, speaker, s in sorted(top, key=lambda t: t[1]):
        if s.lower() not in seen:
            seen.add(s.lower())
            out.append(f'{"Caller" if speaker == "user" else "Agent"}: "{s}"')
    return out


def _asks_for_action(sentence: str) -> bool:
    """A request or commitment followed (within four words) by a verb of doing something."""
    for marker in (*_REQUEST.finditer(sentence), *_COMMIT.finditer(sentence)):
        after = _WORD_AFTER.findall(sentence[marker.end() :].lower())[:4]
        for w in after:
            if w in STOP_MARKERS:
                break
            if w in ACTION_VERBS:
                return True
    return False


def action_items(utterances: Sequence[Utterance], *, limit: int = 10) -> list[str]:
    """Quoted sentences where someone asks for something to be done or commits to doing it.

    Questions for information ("can you hear me?", "can you tell me the hours?") are not
    action items; an empty list means there were none."""
    out: list[str] = []
    seen: set[str] = set()
    for u in utterances:
        for s in sentences(u.text):
            if not _asks_for_action(s) or s.lower() in seen:
                continue
            seen.add(s.lower())
            who = "Caller" if u.speaker == "user" else "Agent"
            verb = "asked" if _REQUEST.search(s) and not _COMMIT.search(s) else "said"
            out.append(f'{who} {verb}: "{s}"')
            if len(out) >= limit:
                return out
    return out


def sentiment(utterances: Sequence[Utterance]) -> Sentiment:
    """Lexicon score of the caller's words, with simple negation ("not good" is negative)."""
    caller = [u for u in utterances if u.speaker == "user"] or list(utterances)
    score = 0
    for u in caller:
        words = _WORD.findall(u.text.lower())
        for i, w in enumerate(words):
            polarity = 1 if w in POSITIVE else -1 if w in NEGATIVE else 0
            if polarity and any(p in NEGATIONS for p in words[max(0, i - 3) : i]):
                polarity = -polarity
            score += polarity
    if score > 0:
        return "positive"
    if score < 0:
        return "negative"
    return "neutral"


EXTRACTIVE_LABEL = "Extractive summary (quoted from the call):"


def extractive_summary(utterances: Sequence[Utterance]) -> str:
    """What the caller said they wanted and the agent's most informative answer, quoted.

    Labelled as extractive: nothing in it is rephrased, so nothing can be invented."""
    callers = sum(1 for u in utterances if u.speaker == "user")
    head = f"A conversation of {len(utterances)} turns ({callers} by the caller)."
    points = key_points(utterances, limit=3)
    if not points:
        return head
    return " ".join([head, EXTRACTIVE_LABEL, *points])


def transcript_text(utterances: Sequence[Utterance]) -> str:
    return "\n".join(
        f"{'Caller' if u.speaker == 'user' else 'Agent'}: {u.text}" for u in utterances
    )


def chunk_utterances(
    utterances: Sequence[Utterance], max_chars: int = CHUNK_CHARS
) -> list[list[Utterance]]:
    """Consecutive groups of whole utterances, each under `max_chars` (one may exceed it)."""
    chunks: list[list[Utterance]] = []
    current: list[Utterance] = []
    size = 0
    for u in utterances:
        n = len(u.text) + 10
        if current and size + n > max_chars:
            chunks.append(current)
            current, size = [], 0
        current.append(u)
        size += n
    if current:
        chunks.append(current)
    return chunks


class HeuristicSummarizer:
    """Offline and deterministic: every part is heuristic."""

    name = HEURISTIC

    def summarize(self, utterances: Sequence[Utterance]) -> SummaryResult:
        parts = ("summary", "key_points", "action_items", "sentiment")
        return SummaryResult(
            summary=extractive_summary(utterances),
            key_points=key_points(utterances),
            action_items=action_items(utterances),
            sentiment=sentiment(utterances),
            model=HEURISTIC,
            sources={**dict.fromkeys(parts, HEURISTIC), "summary": "extractive"},
        )


# --------------------------------------------------------------------------- local model

ParagraphWriter = Callable[[str, str], str]  # (system prompt, user text) -> answer

PARAGRAPH_PROMPT = (
    "You summarize customer calls. In one or two short sentences, say what the caller "
    "wanted and what the agent answered, using only facts from the call. No lists."
)
MERGE_PROMPT = (
    "Combine these partial summaries of one call into one short paragraph (at most three "
    "sentences). No lists."
)


# The summariser's use of the local model, beside the live agent's (``agent_options``): one
# slot, a 2048-token context, no host-RAM prompt cache. llama.cpp's server keeps the KV state
# of earlier prompts (SmolLM2: 22.5 KiB a token) in a host-memory cache of up to 8 GiB by
# default. Each summary is a new transcript, so the Celery worker kept growing, about 0.6 MiB
# a call (bench/results/celery-memory-*.md). A summary never repeats an earlier transcript,
# and the slot's own KV cache still reuses the prompt prefix they share.
SUMMARY_LLAMA = LlamaOptions(
    use="summaries",
    parallel=1,
    ctx_per_slot=2048,
    threads=CPU_THREADS,
    cache_ram_mib=0,
    cache_idle_slots=False,
)


class LocalWriter:
    """Chat completions on the process's local model (``engines``), loaded on first use.

    Greedy and seeded, so a transcript always gets the same paragraph; one call at a time
    (the engine's own thread).
    """

    def __init__(self, store: ModelStore, model: str, *, max_tokens: int = 96) -> None:
        self._store = store
        self._model = model
        self._max_tokens = max_tokens

    def __call__(self, system: str, text: str) -> str:
        engine = get_llama(self._store, self._model, SUMMARY_LLAMA)
        request = {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": text},
            ],
            "max_tokens": self._max_tokens,
            "temperature": 0.0,
            "seed": 1,
        }
        answer = engine.executor.submit_sync(engine.chat_sync, request)
        if not isinstance(answer, dict) or "choices" not in answer:
            raise RuntimeError("local model returned no completion")
        return str(answer["choices"][0]["message"]["content"]).strip()


def local_writer(settings: Settings) -> LocalWriter | None:
    """The local writer on this process's model store, or None when the model or engine is
    not installed."""
    if not llama_available():
        return None
    model = settings.llm.model if settings.llm.model in LLM_MODELS else LLM_MODELS[0]
    return LocalWriter(process_models(settings), model)


_STEM_CHARS = 5  # "delivered" and "delivery" count as the same word


def supported(sentence: str, transcript: str) -> bool:
    """True when the transcript backs every number and name in ``sentence`` and nearly all of
    its content words: a small model's sentence that adds anything is dropped."""
    said = transcript.lower()
    said_words = {w[:_STEM_CHARS] for w in _WORD.findall(said)}
    for number in re.findall(r"\d+(?:[.:,]\d+)*", sentence):
        if number not in said:
            return False
    for name in _NAME.findall(sentence):
        if name.lower()[:_STEM_CHARS] not in said_words:
            return False
    words = [w for w in _informative(sentence) if w not in ("caller", "agent", "call", "customer")]
    if len(words) < 2:
        return False
    known = sum(w[:_STEM_CHARS] in said_words for w in words)
    return known / len(words) >= 0.9


class LocalSummarizer(HeuristicSummarizer):
    """Extractive parts plus the model's sentences that the transcript supports.

    The 135M model writes a paragraph (map-reduce over chunks); each of its sentences is kept
    only when :func:`supported` by the transcript, and the quoted extractive summary follows,
    labelled as such. Key points, action items and sentiment stay heuristic."""

    def __init__(
        self,
        writer: ParagraphWriter | None,
        *,
        model: str = "smollm2-135m",
        chunk_chars: int = 2500,
    ) -> None:
        self._writer = writer
        self._model = model
        self._chunk_chars = chunk_chars
        self.name = f"{model}+{HEURISTIC}" if writer else HEURISTIC

    def summarize(self, utterances: Sequence[Utterance]) -> SummaryResult:
        base = super().summarize(utterances)
        if self._writer is None or not utterances:
            return base
        try:
            partials = [
                self._writer(PARAGRAPH_PROMPT, transcript_text(chunk))
                for chunk in chunk_utterances(utterances, self._chunk_chars)
            ]
            paragraph = (
                partials[0] if len(partials) == 1 else self._writer(MERGE_PROMPT, "\n\n".join(partials))
            )
        except Exception:
            logger.warning("local model summary failed; keeping the extractive one", exc_info=True)
            return base
        said = transcript_text(utterances)
        kept = [s for s in sentences(" ".join(paragraph.split())) if supported(s, said)]
        if not kept:
            return SummaryResult(
                summary=base.summary,
                key_points=base.key_points,
                action_items=base.action_items,
                sentiment=base.sentiment,
                model=HEURISTIC,
                sources={**base.sources, "summary": "extractive"},
            )
        points = key_points(utterances, limit=3)
        summary = " ".join([*kept, EXTRACTIVE_LABEL, *points]) if points else " ".join(kept)
        return SummaryResult(
            summary=summary,
            key_points=base.key_points,
            action_items=base.action_items,
            sentiment=base.sentiment,
            model=self.name,
            sources={**base.sources, "summary": f"{self._model}+extractive"},
        )


# --------------------------------------------------------------------------- OpenAI

JSON_PROMPT = (
    "You summarize a customer call. Use only what the transcript says. summary: one short "
    "paragraph; key_points: short strings; action_items: who does what, only for things "
    "someone asked to be done or promised to do (an empty list when there are none); "
    "sentiment: the caller's."
)
REDUCE_PROMPT = (
    "These objects summarize consecutive parts of one call. Merge them into one, dropping "
    "duplicates; keep only facts they contain."
)


SUMMARY_MAX_TOKENS = 800


class SummaryOut(BaseModel):
    """The structured output asked of an OpenAI-compatible model (its JSON schema is sent)."""

    model_config = ConfigDict(extra="forbid")

    summary: str
    key_points: list[str]
    action_items: list[str]
    sentiment: Sentiment


class OpenAISummarizer:
    """Every part from an OpenAI-compatible chat model as structured output (a JSON schema
    from :class:`SummaryOut`, parsed and validated by the client), map-reduce over chunks."""

    def __init__(self, options: LLMSettings, *, chunk_chars: int = 12000, client: Any = None) -> None:
        self._model = options.model
        self._chunk_chars = chunk_chars
        if client is None:
            import openai

            client = openai.OpenAI(
                api_key=options.api_key.get_secret_value() if options.api_key else "no-key",
                base_url=options.base_url,
                timeout=60.0,
                max_retries=0,  # Celery retries, with backoff
            )
        self._client = client
        self.name = options.model

    def _ask(self, system: str, text: str) -> SummaryOut | None:
        """The model's parsed answer; None when it refused or answered outside the schema."""
        import openai

        try:
            resp = self._client.beta.chat.completions.parse(
                model=self._model,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
                response_format=SummaryOut,
                temperature=0.0,
                max_tokens=SUMMARY_MAX_TOKENS,  # a small model may fill the schema forever
            )
        except (
            openai.APIConnectionError,
            openai.APITimeoutError,
            openai.RateLimitError,
            openai.InternalServerError,
        ) as err:
            raise TransientError(f"LLM unavailable ({type(err).__name__})") from None
        except (ValidationError, ValueError, openai.LengthFinishReasonError) as err:
            logger.warning("summary model answered outside the schema: %s", type(err).__name__)
            return None
        parsed: SummaryOut | None = resp.choices[0].message.parsed
        return parsed

    def summarize(self, utterances: Sequence[Utterance]) -> SummaryResult:
        parts = [
            self._ask(JSON_PROMPT, transcript_text(chunk))
            for chunk in chunk_utterances(utterances, self._chunk_chars)
        ]
        if len(parts) == 1:
            data = parts[0]
        else:
            merged = [p.model_dump() for p in parts if p is not None]
            data = self._ask(REDUCE_PROMPT, json.dumps(merged)) if merged else None
        if data is None:
            fallback = HeuristicSummarizer().summarize(utterances)
            return SummaryResult(
                summary=fallback.summary,
                key_points=fallback.key_points,
                action_items=fallback.action_items,
                sentiment=fallback.sentiment,
                model=f"{self._model}+{HEURISTIC}",
                sources=fallback.sources,
            )
        return SummaryResult(
            summary=data.summary.strip(),
            key_points=[p.strip() for p in data.key_points if p.strip()],
            action_items=[a.strip() for a in data.action_items if a.strip()],
            sentiment=data.sentiment,
            model=self._model,
            sources=dict.fromkeys(("summary", "key_points", "action_items", "sentiment"), self._model),
        )


def default_summarizer(settings: Settings) -> Summarizer:
    """OpenAI when configured, else the offline local one (heuristic when no model ships)."""
    if settings.llm.provider == "openai":
        return OpenAISummarizer(settings.llm)
    writer = local_writer(settings)
    return LocalSummarizer(writer, model=settings.llm.model if writer else HEURISTIC)


# --------------------------------------------------------------------------- database side


def load_utterances(db: Session, session_id: str) -> tuple[list[Utterance], int]:
    """The merged transcript (the report's when post-processing ran) and the raw line count."""
    count = int(
        db.scalar(
            select(func.count()).select_from(TranscriptLine).where(
                TranscriptLine.session_id == session_id
            )
        )
        or 0
    )
    report = db.get(TranscriptReport, session_id)
    if report is not None and report.source_line_count == count:
        return [Utterance(str(x["speaker"]), str(x["text"])) for x in report.lines], count
    from tasks.transcripts import load_fragments, merge_fragments

    merged = merge_fragments(load_fragments(db, session_id))
    return [Utterance(m.speaker, m.text) for m in merged], count


def summarize(
    settings: Settings,
    session_id: str,
    *,
    summarizer: Summarizer | None = None,
) -> dict[str, Any]:
    """Summarize one session unless a summary of the same lines exists; returns what it did."""
    from store.db import session_scope

    with session_scope(settings.db.url) as db:
        if db.get(AgentSessionRecord, session_id) is None:
            return {"session_id": session_id, "status": "missing"}
        utterances, count = load_utterances(db, session_id)
        existing = db.get(Summary, session_id)
        if existing is not None and existing.source_line_count == count:
            return {"session_id": session_id, "status": "exists", "model": existing.model}
    if not utterances:
        result = SummaryResult(
            "No conversation was recorded.", [], [], "neutral", HEURISTIC, {}
        )
    else:
        # The model runs outside any transaction: it can take a while.
        result = (summarizer or default_summarizer(settings)).summarize(utterances)
    with session_scope(settings.db.url) as db:
        row = db.get(Summary, session_id)
        if row is None:
            row = Summary(session_id=session_id)
            db.add(row)
        row.model = result.model[:64]
        row.summary = result.summary
        row.key_points = list(result.key_points)
        row.action_items = list(result.action_items)
        row.sentiment = result.sentiment
        row.source_line_count = count
    logger.info(
        "session summarized",
        extra={"session_id": session_id, "model": result.model, "lines": count},
    )
    return {
        "session_id": session_id,
        "status": "done",
        "model": result.model,
        "sources": result.sources,
    }


@shared_task(
    base=AvatarTask,
    bind=True,
    name="tasks.summaries.summarize_session",
    soft_time_limit=240,
    time_limit=300,
)
def summarize_session(self: AvatarTask, session_id: str) -> dict[str, Any]:
    """Write the session's `Summary` (summary, key points, action items, sentiment).

    Safe to run twice: it does nothing when a summary of the same number of transcript lines
    exists, and otherwise overwrites the one row keyed by the session id.
    """
    return summarize(self.settings, session_id)
