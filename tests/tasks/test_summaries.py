"""Summaries: heuristics, an injected summarizer, the OpenAI path and the local default."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import Summary, TranscriptLine
from tasks.app import AvatarCelery
from tasks.summaries import (
    HeuristicSummarizer,
    LocalSummarizer,
    OpenAISummarizer,
    SummaryResult,
    Utterance,
    action_items,
    chunk_utterances,
    key_points,
    sentiment,
    summarize,
)
from tests.conftest import free_port
from tests.tasks.conftest import WorkerProcess, wait_for
from tests.tasks.helpers import new_session

CALL = [
    Utterance("user", "Hi. My internet connection has been down since yesterday."),
    Utterance("agent", "I'm sorry to hear that. Let me check your internet connection."),
    Utterance("user", "I need the internet connection for work, please fix it quickly."),
    Utterance("agent", "I will send a technician tomorrow morning to repair the connection."),
    Utterance("user", "Great, thank you, that is very helpful."),
]


class CountingSummarizer:
    """Deterministic stand-in; counts calls so tests see whether the model ran."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def summarize(self, utterances: Sequence[Utterance]) -> SummaryResult:
        self.calls += 1
        return SummaryResult(f"{len(utterances)} turns", ["k"], ["a"], "neutral", "counting", {})


@pytest.mark.unit
def test_heuristic_parts() -> None:
    items = action_items(CALL)
    assert any("I will send a technician" in a for a in items)
    assert any("please fix it" in a for a in items)
    assert all("thank you" not in a for a in items)
    points = key_points(CALL, limit=2)
    assert len(points) == 2 and all("connection" in p for p in points)
    assert sentiment(CALL) == "positive"
    assert sentiment([Utterance("user", "This is not good, it is broken again.")]) == "negative"
    assert sentiment([Utterance("user", "What time is it?")]) == "neutral"


@pytest.mark.unit
def test_chunking_keeps_order_and_whole_utterances() -> None:
    chunks = chunk_utterances(CALL * 20, max_chars=300)
    assert len(chunks) > 5
    assert [u for c in chunks for u in c] == CALL * 20
    assert all(sum(len(u.text) + 10 for u in c) <= 300 for c in chunks)


@pytest.mark.unit
def test_local_summarizer_marks_model_and_heuristic_parts() -> None:
    prompts: list[str] = []

    def writer(system: str, text: str) -> str:
        prompts.append(text)
        return "  The caller's internet is down;  a technician comes tomorrow. "

    result = LocalSummarizer(writer, chunk_chars=200).summarize(CALL)
    assert result.summary == "The caller's internet is down; a technician comes tomorrow."
    assert result.model == "smollm2-135m+heuristic"
    assert result.sources == {"summary": "smollm2-135m", "key_points": "heuristic",
                              "action_items": "heuristic", "sentiment": "heuristic"}
    assert len(prompts) > 2  # map over chunks, then reduce

    def broken(system: str, text: str) -> str:
        raise RuntimeError("model crashed")

    fallback = LocalSummarizer(broken).summarize(CALL)
    assert fallback.model == "heuristic" and fallback.summary.startswith("A conversation of 5")


def add_lines(settings: Settings, sid: str, utterances: Sequence[Utterance], start: int = 0) -> None:
    with session_scope(settings.db.url) as db:
        for i, u in enumerate(utterances, start):
            db.add(TranscriptLine(session_id=sid, item_id=f"i{i}", speaker=u.speaker, text=u.text))


@pytest.mark.unit
def test_summarize_skips_when_lines_did_not_change(settings: Settings) -> None:
    sid = new_session(settings)
    add_lines(settings, sid, CALL)
    fake = CountingSummarizer()
    assert summarize(settings, sid, summarizer=fake)["status"] == "done"
    assert summarize(settings, sid, summarizer=fake)["status"] == "exists"
    assert fake.calls == 1
    add_lines(settings, sid, [Utterance("user", "One more thing.")], start=len(CALL))
    assert summarize(settings, sid, summarizer=fake)["status"] == "done"
    assert fake.calls == 2
    with session_scope(settings.db.url) as db:
        row = db.get(Summary, sid)
        assert row is not None
        assert row.source_line_count == 6 and row.model == "counting"
        assert db.query(Summary).count() == 1


@pytest.mark.unit
def test_heuristic_default_is_offline(settings: Settings) -> None:
    result = HeuristicSummarizer().summarize(CALL)
    assert result.model == "heuristic" and result.sentiment == "positive"
    assert set(result.sources.values()) == {"heuristic"}


# --------------------------------------------------------------------------- OpenAI


class FakeOpenAI:
    """A local OpenAI-compatible HTTP endpoint (the real `openai` client talks to it)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
def openai_stub() -> Iterator[FakeOpenAI]:
    stub = FakeOpenAI([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stub.requests.append(body)
            answer = stub.answers[min(len(stub.requests), len(stub.answers)) - 1]
            payload = json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": json.dumps(answer)}}],
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", stub.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield stub
    server.shutdown()
    server.server_close()


@pytest.mark.unit
def test_openai_summarizer_map_reduce(openai_stub: FakeOpenAI, settings: Settings) -> None:
    part = {"summary": "part", "key_points": ["p"], "action_items": [], "sentiment": "neutral"}
    final = {"summary": "Internet down; technician tomorrow.", "key_points": ["down"],
             "action_items": ["Agent sends a technician"], "sentiment": "positive"}
    n = len(chunk_utterances(CALL, 120))
    assert n > 1
    openai_stub.answers = [*([part] * n), final]
    llm = load_settings(
        llm={"provider": "openai", "model": "gpt-test", "base_url": openai_stub.base_url,
             "api_key": SecretStr("sk-test")},
        _env_file=None,
    ).llm
    result = OpenAISummarizer(llm, chunk_chars=120).summarize(CALL)
    assert result.summary == "Internet down; technician tomorrow."
    assert result.action_items == ["Agent sends a technician"]
    assert result.model == "gpt-test" and set(result.sources.values()) == {"gpt-test"}
    assert len(openai_stub.requests) == n + 1  # map over the chunks, then one reduce
    assert all(r["response_format"] == {"type": "json_object"} for r in openai_stub.requests)
    assert any("Agent: I will send" in r["messages"][1]["content"]
               for r in openai_stub.requests[:n])
    assert json.loads(openai_stub.requests[n]["messages"][1]["content"]) == [part] * n


@pytest.mark.unit
def test_openai_summarizer_fills_bad_fields_heuristically(openai_stub: FakeOpenAI) -> None:
    openai_stub.answers = [{"summary": "Short.", "key_points": "not a list", "sentiment": "meh"}]
    llm = load_settings(
        llm={"provider": "openai", "model": "gpt-test", "base_url": openai_stub.base_url,
             "api_key": SecretStr("sk-test")},
        _env_file=None,
    ).llm
    result = OpenAISummarizer(llm).summarize(CALL)
    assert result.summary == "Short."
    assert result.sentiment == "positive"  # the lexicon's answer
    assert result.sources["summary"] == "gpt-test" and result.sources["sentiment"] == "heuristic"
    assert result.model == "gpt-test+heuristic"


# --------------------------------------------------------------------------- worker


@pytest.mark.integration
@pytest.mark.slow
def test_summarize_through_worker_with_the_local_default(
    sender: AvatarCelery, task_settings: Settings, celery_worker: WorkerProcess
) -> None:
    sid = new_session(task_settings)
    add_lines(task_settings, sid, CALL)
    first = sender.send_task("tasks.summaries.summarize_session", args=(sid,))

    def row() -> Summary | None:
        with session_scope(task_settings.db.url) as db:
            return db.get(Summary, sid)

    summary = wait_for(row, timeout=180, what="the summary")
    assert summary.source_line_count == len(CALL)
    assert summary.sentiment == "positive"
    assert any("technician" in a for a in summary.action_items)
    assert summary.model in ("smollm2-135m+heuristic", "heuristic")
    assert summary.summary
    second = sender.send_task("tasks.summaries.summarize_session", args=(sid,))
    wait_for(lambda: f"summarize_session[{second.id}] succeeded" in celery_worker.log_text(),
             timeout=60, what="the second run")
    assert f"summarize_session[{first.id}] succeeded" in celery_worker.log_text()
    again = row()
    assert again is not None and again.created_at == summary.created_at
    assert again.summary == summary.summary
