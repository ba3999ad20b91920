"""Word timings for captions, from Piper's phoneme alignment.

The pure pairing of written and spoken words is checked on hand-made timings; then the word
start times Piper gives for real speech are held against Whisper's own word alignment of it.
(An earlier form cut the audio at a word start and asked Whisper for the words before it; Whisper
tiny hallucinates on clips cut mid-sentence, so that test failed in CI on correct timings.)
"""

from __future__ import annotations

import difflib
import itertools
import statistics

import pytest
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT
from livekit.agents.voice.io import TimedString

from engines.piper import PiperEngine, piece_ends, split_long_text
from engines.whisper import WhisperEngine
from live.alignment import PhonemeTiming, SentenceWords, pair_words, spoken_words, written_words
from live.providers.local_stt import to_whisper_audio
from live.providers.local_tts import LeadPhrases, LocalTTS
from tests.live.providers.speech import normalize, pcm_frame


def _timings(spec: str, step: float = 0.1) -> list[PhonemeTiming]:
    """One phoneme per character, ``step`` seconds each."""
    return [PhonemeTiming(ch, i * step, step) for i, ch in enumerate(spec)]


@pytest.mark.unit
def test_written_words_join_back_into_the_text() -> None:
    text = "  Hello there — it's $3.50, isn't it?  "
    pieces = written_words(text)
    assert "".join(pieces) == text
    assert [p.strip() for p in pieces] == ["Hello", "there —", "it's", "$3.50,", "isn't", "it?"]


@pytest.mark.unit
def test_spoken_words_split_at_word_gaps_and_punctuation() -> None:
    # "ab cd, ef." -> three words; the comma's pause belongs to no word
    words = spoken_words(_timings("ab cd, ef."))
    assert words == [(0.0, pytest.approx(0.2)), (pytest.approx(0.3), pytest.approx(0.5)),
                     (pytest.approx(0.7), pytest.approx(0.9))]


@pytest.mark.unit
def test_pairing_is_one_to_one_when_the_counts_match_and_in_order_otherwise() -> None:
    spoken = [(0.0, 0.2), (0.3, 0.5), (0.6, 0.9)]
    assert pair_words(["a ", "b ", "c"], spoken) == [
        ("a ", 0.0, 0.2), ("b ", 0.3, 0.5), ("c", 0.6, 0.9)]
    # "$3" is spoken as two words: the written words still cover the sentence in order
    paired = pair_words(["costs ", "$3"], [(0.0, 0.2), (0.3, 0.5), (0.6, 0.9)])
    assert [p for p, _, _ in paired] == ["costs ", "$3"]
    assert paired[0][1] == 0.0 and paired[-1][2] == 0.9
    assert all(b[1] >= a[1] and s <= e for a, b in itertools.pairwise(paired) for _, s, e in [b])


@pytest.mark.unit
def test_sentence_words_follow_piper_sentences_and_hand_back_the_rest() -> None:
    words = SentenceWords("Hi Dr. Who there")
    first = words.next_sentence(_timings("hi dɑk."), offset=1.0)  # espeak ends at "Dr."
    assert [(w, s) for w, s, _ in first] == [("Hi ", 1.0), ("Dr. ", pytest.approx(1.3))]
    second = words.next_sentence(_timings("hu ðɛɹ"), offset=2.0)
    assert [w for w, _, _ in second] == ["Who ", "there"]
    assert words.rest() == []


@pytest.mark.unit
def test_a_long_sentence_cut_at_a_comma_ends_its_words_at_the_cut() -> None:
    """Piper speaks a long text as pieces cut at commas, each its own sentence with its own
    timings: the first piece's words must not take in the rest of the sentence (CI: the
    captions of a 13 s reply ended 3 s before its sound)."""
    text = ("It's called the Blue Sky of Earth, and it's made up of twenty light years of blue, "
            "which is why we have a different color from Earth to us.")
    ends = piece_ends(text)
    assert [text[a:b].strip(" ") for a, b in itertools.pairwise([0, *ends])] == [
        p.strip(" ") for p in split_long_text(text)]
    assert len(ends) == 2
    words = SentenceWords(" " + text, [1 + e for e in ends])  # offsets in the text it is given
    first = words.next_sentence(_timings("aa aa"), offset=0.0)
    assert first[-1][0] == "blue, "
    second = words.next_sentence(_timings("bb bb"), offset=3.0)
    assert second[0][0] == "which " and second[0][1] == 3.0 and second[-1][0].strip() == "us."
    assert words.rest() == []


@pytest.mark.unit
def test_split_long_text_keeps_its_pieces() -> None:
    text = "one, " * 30 + "end."
    assert " ".join(split_long_text(text)) == text
    assert all(len(p) <= 100 for p in split_long_text(text))
    assert split_long_text("short, text") == ["short, text"]
    assert piece_ends("short, text") == [11]


def _seconds(value: object) -> float:
    assert isinstance(value, float), value  # every word is timed
    return value


async def _speak(tts: LocalTTS, text: str) -> tuple[bytes, list[TimedString]]:
    stream = tts.stream()
    for word in text.split(" "):  # token-ish pieces, as an LLM would send them
        stream.push_text(word + " ")
    stream.end_input()
    pcm = b""
    timed: list[TimedString] = []
    async for ev in stream:
        timed.extend(t for t in ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])
                     if isinstance(t, TimedString))
        pcm += bytes(ev.frame.data)
    await stream.aclose()
    return pcm, timed


async def _speak_whole(tts: LocalTTS, text: str) -> tuple[bytes, list[TimedString]]:
    """The same, for a text given whole (``TTS.synthesize``, as ``session.say`` does)."""
    pcm = b""
    timed: list[TimedString] = []
    async with tts.synthesize(text) as stream:
        async for ev in stream:
            timed.extend(t for t in ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])
                         if isinstance(t, TimedString))
            pcm += bytes(ev.frame.data)
    return pcm, timed


@pytest.mark.slow
async def test_piper_word_timings_cut_the_speech_between_words(
    piper: PiperEngine, whisper: WhisperEngine
) -> None:
    text = ("Hello there, my name is Ava. I can tell you about the ocean, "
            "the stars and the mountains. What would you like to hear?")
    pcm, timed = await _speak(LocalTTS(engine=piper), text)
    duration = len(pcm) / 2 / piper.sample_rate
    words = [t for t in timed if t.strip()]
    assert "".join(timed).split() == text.split()  # every word, once, in order
    assert len(words) == len(text.split())  # one timed string per written word
    starts = [_seconds(t.start_time) for t in words]
    ends = [_seconds(t.end_time) for t in words]
    assert all(b >= a for a, b in itertools.pairwise(starts))
    assert all(s < e <= duration + 1e-3 for s, e in zip(starts, ends, strict=True))
    assert ends[-1] > duration - 0.6  # the last word ends near the end of the audio
    # Whisper's own word alignment of the same audio agrees: Piper's start times are where a
    # listener hears each word begin (the property captions and an interrupted reply's stored
    # transcript rely on). Whisper's alignment is itself ~50 ms typical, a few words off by more.
    heard = whisper.word_times_sync(to_whisper_audio(pcm_frame(pcm, piper.sample_rate)))
    ours = [" ".join(normalize(str(w))) for w in words]
    theirs = [" ".join(normalize(w)) for w, _, _ in heard]
    matcher = difflib.SequenceMatcher(a=ours, b=theirs, autojunk=False)
    offsets = [abs(starts[b.a + i] - heard[b.b + i][1])
               for b in matcher.get_matching_blocks() for i in range(b.size)]
    assert len(offsets) >= len(words) - 3, (ours, theirs)  # the same words were heard
    assert statistics.median(offsets) <= 0.12, offsets
    assert sum(o <= 0.25 for o in offsets) >= 0.8 * len(offsets), offsets


@pytest.mark.unit
@pytest.mark.parametrize(("pieces", "phrase", "rest"), [
    (["Hi", "!", " I", "'m", " Ava", "."], "Hi! ", "I"),  # a short sentence goes at once
    (["The", " story", " of", " a", " keeper", ",", " long", " ago", "."], "The story of a keeper, ", "long"),
    (["Sure", ",", " I", " can", " help", ".", " What"], "Sure, ", "I"),  # one word is enough first
    # no mark yet: before a joining word once four words are out
    (["The", " sky", " looks", " blue", " at", " night", " because"], "The sky looks blue ", "at night"),
    (["I", " want", " to", " go", " to", " the", " shop", "."], "I want to go ", "to the"),
    (["Hi", " there", " and", " welcome", "."], "Hi there and welcome. ", ""),  # too few words
    (["It costs $3.50", " today", ".", " Ok"], "It costs $3.50 today. ", "Ok"),  # no cut inside a number
])
def test_the_first_phrase_ends_at_the_first_sentence_end_or_clause(
    pieces: list[str], phrase: str, rest: str
) -> None:
    lead = LeadPhrases(lead_words=1)
    for piece in [*pieces, " "]:
        got, after = lead.push(piece)
        if got:
            assert (got, after.strip()) == ([phrase], rest) and lead.done
            return
    pytest.fail("no phrase cut")


@pytest.mark.unit
def test_phrases_go_on_until_the_lead_then_the_rest_goes_to_sentences() -> None:
    """A one-word first sentence does not leave the speech to wait for a whole sentence."""
    lead = LeadPhrases(lead_words=8)
    text = "This. The sky is blue, because air scatters blue light more. It is pretty."
    phrases: list[str] = []
    rest = ""
    for word in text.split(" "):
        got, after = lead.push(word + " ")
        phrases += got
        rest += after
    assert "".join(phrases) + rest == text + " "  # every word once, in order
    assert phrases == ["This. ", "The sky is blue, ", "because air scatters blue light more. "]


@pytest.mark.unit
def test_the_first_phrase_is_cut_later_with_the_early_cuts_off() -> None:
    lead = LeadPhrases(lead_words=1, first_clause_words=3, first_join_words=0)
    got: list[str] = []
    for word in "Sure, I can help you with that. Ok".split(" "):
        got += lead.push(word + " ")[0]
    assert got == ["Sure, I can help you with that. "]
    assert lead.done


@pytest.mark.unit
def test_text_that_ends_before_a_phrase_goes_on_whole() -> None:
    lead = LeadPhrases()
    assert lead.push("Okay then") == ([], "")
    assert lead.release() == "Okay then" and lead.done


@pytest.mark.slow
async def test_the_captions_of_a_long_sentence_end_with_its_sound(piper: PiperEngine) -> None:
    """A sentence over 100 characters is spoken in pieces: its last word is still timed at
    the end of the audio, whether it comes whole or as the LLM streams it."""
    text = ("The sky on us on the main has a different hue than ours. It's called the Blue Sky "
            "of Earth, and it's made up of twenty light years of blue, which is why we have a "
            "different color from Earth to us.")
    for speak in (_speak, _speak_whole):
        pcm, timed = await speak(LocalTTS(engine=piper), text)
        duration = len(pcm) / 2 / piper.sample_rate
        words = [t for t in timed if t.strip()]
        assert "".join(timed).split() == text.split()
        assert _seconds(words[-1].start_time) > duration - 0.8, (duration, [
            (str(w), w.start_time) for w in words])


@pytest.mark.slow
async def test_a_reply_cut_at_its_first_clause_keeps_every_word_once(piper: PiperEngine) -> None:
    """The first clause is synthesized on its own; captions still cover the text exactly."""
    text = "Well, the lighthouse keeper lived alone on the rock for many years. He liked it."
    pcm, timed = await _speak(LocalTTS(engine=piper), text)
    assert "".join(timed).split() == text.split()
    assert len([t for t in timed if t.strip()]) == len(text.split())
    assert len(pcm) > 0
