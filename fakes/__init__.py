"""Fakes of hosted providers' wire protocols, served on 127.0.0.1 for the real LiveKit plugins.

Used by the tests and by the load benchmark (``bench.load``); not part of the installed
service. Each fake is an aiohttp server started on a free loopback port (``async with
Fake(...) as f``), speaking just enough of the vendor's protocol for the unpatched plugin:
OpenAI chat completions (SSE), AssemblyAI v3 streaming (websocket), Cartesia TTS (websocket)
and Tavus, Anam and Beyond Presence sessions (HTTP, then an avatar participant joins the
LiveKit room like the vendor's worker). Each records what it received and can be told to fail,
so tests can check both sides; the speech fakes can also be told to take a vendor's time
(``first_token_s``, ``first_byte_s``, ``final_after_silence_s``). Imports nothing of the
service but ``config`` (tests/test_layout.py).
"""
