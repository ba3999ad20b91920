"""Transcript text with markup stays text in every export (issue #12, "Bad input")."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from tasks.transcripts import MergedLine, srt_text, to_markdown, to_srt, to_webvtt

pytestmark = pytest.mark.unit

SAID = (
    '<script>alert(1)</script><img src=x onerror=alert(2)> ![t](http://127.0.0.1:9/p.png) '
    "[click](javascript:alert(3)) a & b --> 00:00:09.000 {\\an8}<i>big</i>\n\n# heading\n99"
)
LINES = [MergedLine(speaker="user", text=SAID, start=0.0, end=2.0),
         MergedLine(speaker="agent", text="fine", start=2.5, end=3.0)]
STATS = {"speakers": {}, "interruptions": 0}


def test_markdown_export_renders_as_text() -> None:
    md = to_markdown(LINES, STATS)
    html = MarkdownIt("commonmark").render(md)
    for bad in ("<script", "<img", "<a ", "<h1>heading", "<i>"):
        assert bad not in html, bad
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "[click](javascript:alert(3))" in html  # shown, not linked
    assert html.count("<p>") == 2 and md.count("**Caller**") == 1


def test_webvtt_export_escapes_cue_text() -> None:
    vtt = to_webvtt(LINES)
    cue = vtt.split("\n")[4]
    assert cue.startswith("<v Caller>")
    body = cue.removeprefix("<v Caller>")
    assert "<" not in body and ">" not in body
    assert "&lt;script&gt;" in body and "a &amp; b" in body
    assert vtt.count(" --> ") == 2  # the text cannot add a cue timing line
    assert vtt.split("\n\n")[1].count("\n") == 2  # one text line per cue


def test_srt_export_has_no_tags_or_extra_cues() -> None:
    srt = to_srt(LINES)
    first = srt.split("\n\n")[0].split("\n")
    assert len(first) == 3 and first[2].startswith("Caller: ")
    assert "<" not in srt and "{\\an8}" not in srt
    assert srt.count(" --> ") == 2  # the caller's own "-->" cannot form a timing line
    assert srt_text("<b>x</b>") == "\u2039b\u203ax\u2039/b\u203a"
