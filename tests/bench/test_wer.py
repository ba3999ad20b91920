"""The scoring the interruption test and benchmarks judge a cut reply by."""

from __future__ import annotations

from bench.wer import cut_alignment, wer


def test_a_respelled_cut_word_still_lines_up_with_the_stored_reply() -> None:
    # Whisper tiny on a clip that ended inside "keeper" (seen in CI)
    assert cut_alignment("The story of a lighthouse keeper", "The slide house keepers.") == (15, 0)


def test_a_short_clip_respelled_in_the_middle_lines_up_at_both_ends() -> None:
    # Whisper tiny on a clip cut inside "keeper" (seen in CI on a busy machine): only "mine"
    # and "keep" are spelled alike, in order, and the stored reply ends where the clip did
    assert cut_alignment("Mine, a lighthouse keeper", "mine. I like how I keep") == (8, 0)


def test_a_respelled_tail_counts_as_heard_letters() -> None:
    # Whisper tiny on a clip that ended inside "lighthouse" (seen in CI): "of a light" heard
    # as "to like"; the stored reply ends where the caller stopped hearing it
    assert cut_alignment("The stories of a lighthouse", "the stories to like.") == (10, 0)


def test_a_long_made_up_tail_does_not_excuse_a_reply_that_ran_on() -> None:
    stored = ("Once upon a time there was a lighthouse keeper named Tom who lived alone by the "
              "sea and every night he lit the lamp")
    shared, past = cut_alignment(stored, "Once upon a time there was a light. Thank you for "
                                 "watching and please subscribe to the channel.")
    assert shared >= 8 and past is not None and past > 8


def test_words_added_at_the_clip_end_do_not_count_against_the_stored_reply() -> None:
    shared, past = cut_alignment("I'll try to remember that story, but",
                                 "I'll remember that story. We tried to remove it.")
    assert shared >= 8 and past is not None and past <= 1


def test_a_stored_reply_that_runs_on_past_what_was_heard_is_caught() -> None:
    stored = ("Once upon a time there was a lighthouse keeper named Tom who lived alone by the "
              "sea and every night he lit the lamp")
    shared, past = cut_alignment(stored, "Once upon a time there was a light")
    assert shared >= 8 and past is not None and past > 10


def test_nothing_in_common_lines_up_nowhere() -> None:
    assert cut_alignment("The story of a lighthouse keeper", "Thank you.") == (0, None)
    assert cut_alignment("", "anything") == (0, None)


def test_word_error_rate_counts_words_not_punctuation() -> None:
    assert wer("Hello, there!", "hello there") == 0.0
    assert wer("a b c d", "a x c") == 0.5
