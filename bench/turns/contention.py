"""Piper's first audio while the local LLM writes a reply on the same cores, and that reply's
time, with the engines' threads busy-waiting between ops (``spin``, their libraries' default)
or sleeping (``default``, what ships). Run each a few times, alternating:

    for m in spin default spin default; do .venv/bin/python -m bench.turns.contention $m; done
"""
# ruff: noqa: E402, E701, E702, E731
import asyncio
import statistics
import sys
import time
from typing import Any

import onnxruntime

SPIN = sys.argv[1:2] == ["spin"]
if SPIN:
    _SO: Any = onnxruntime.SessionOptions
    class SO(_SO):  # type: ignore[misc, valid-type]
        def add_session_config_entry(self, key: str, value: str) -> None:
            if "allow_spinning" not in key:
                super().add_session_config_entry(key, value)
    onnxruntime.SessionOptions = SO  # type: ignore[misc]
    import engines.llama as el
    _lp = el.llama_params
    def lp(*a: Any, **k: Any) -> Any:
        p = _lp(*a, **k); p.cpuparams.poll = 50; p.cpuparams_batch.poll = 50; return p
    el.llama_params = lp
from livekit.agents import llm as lk_llm

from config.session import DEFAULT_INSTRUCTIONS
from config.settings import load_settings
from engines.llama import get_llama
from engines.piper import get_piper
from engines.store import process_models
from live.providers.local_llm import LocalLLM
from live.providers.local_tts import LocalTTS


async def main() -> None:
    s = load_settings(); ctx = process_models(s)
    model = LocalLLM(engine=get_llama(ctx, s.llm.model))
    tts = LocalTTS(engine=get_piper(ctx, "joe-us"))
    async def gen(q: str) -> tuple[float, int]:
        c = lk_llm.ChatContext.empty(); c.add_message(role="system", content=DEFAULT_INSTRUCTIONS); c.add_message(role="user", content=q)
        t0 = time.monotonic(); n = 0
        async with model.chat(chat_ctx=c, extra_kwargs={"temperature": 0.0}) as st:
            async for _ch in st:
                n += 1
        return time.monotonic() - t0, n
    async def speak(text: str) -> float:
        st = tts.stream(); t0 = time.monotonic(); st.push_text(text); st.end_input()
        t = 0.0
        async for _ev in st:
            if not t: t = time.monotonic() - t0
        await st.aclose(); return t
    await gen("Hello."); await speak("Hello there.")
    qs = ["Tell me about the history of lighthouses.", "Why is the sky blue?", "How do I boil an egg?", "What can you help me with?"]
    alone, busy, llm_alone, llm_busy = [], [], [], []
    for i in range(12):
        q = qs[i % 4]
        alone.append(await speak("Sure, "))
        llm_alone.append((await gen(q))[0])
        g = asyncio.create_task(gen(q))
        await asyncio.sleep(0.15)
        busy.append(await speak("Sure, "))
        llm_busy.append((await g)[0])
    med = lambda x: round(statistics.median(x), 3)
    print("spin" if SPIN else "default", "piper first audio alone", med(alone), "with LLM", med(busy), "| LLM reply alone", med(llm_alone), "with piper", med(llm_busy))

asyncio.run(main())
