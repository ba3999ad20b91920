"""Fakes of hosted providers' wire protocols, served on 127.0.0.1 for the real LiveKit plugins.

Each fake is an aiohttp server started on a free loopback port (``async with Fake(...) as f``),
speaking just enough of the vendor's protocol for the unpatched plugin: OpenAI chat
completions (SSE), AssemblyAI v3 streaming (websocket), Cartesia TTS (websocket) and Tavus
conversations (HTTP, then an avatar participant joins the LiveKit room like Tavus's worker).
Each records what it received and can be told to fail, so tests can check both sides.
"""
