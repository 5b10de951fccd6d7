"""How the worker cuts text so the first audio comes early (pure functions)."""

from __future__ import annotations

import pytest

from aivtuber_tts.splitting import (
    FIRST_MAX_CHARS,
    piece_end,
    ready_end,
    split_sentences,
    split_text,
    word_end,
)
from aivtuber_tts.streaming import FIRST_PIECE_CHARS, TextFeed


def test_the_first_clause_goes_alone_then_sentence_by_sentence() -> None:
    text = (
        "Welcome back to the stream, it is so good to see you all. "
        "Thank you for the follow, that really made my day."
    )
    assert split_text(text) == [
        "Welcome back to the stream,",
        "it is so good to see you all.",
        "Thank you for the follow, that really made my day.",
    ]


def test_a_short_first_sentence_is_the_first_piece() -> None:
    text = "Hi chat! Welcome back to the stream, it is so good to see you all."
    assert split_text(text) == [
        "Hi chat!",
        "Welcome back to the stream, it is so good to see you all.",
    ]


@pytest.mark.parametrize(
    "text",
    ["Well, I think so.", "Sure, go on.", "So, here we go again.", "Okay, sure thing."],
)
def test_a_tiny_fragment_is_never_cut_off(text: str) -> None:
    assert split_text(text) == [text]


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        (
            "Okay, let us try this level one more time. I think I have got it now.",
            ["Okay,", "let us try this level one more time.", "I think I have got it now."],
        ),
        ("Oh no, I forgot to save the game.", ["Oh no,", "I forgot to save the game."]),
        ("Hmm, that puzzle makes no sense.", ["Hmm,", "that puzzle makes no sense."]),
        ("Oh, hello there, my friend.", ["Oh,", "hello there, my friend."]),
    ],
)
def test_an_interjection_goes_alone_when_the_rest_is_worth_a_piece(
    text: str, pieces: list[str]
) -> None:
    assert split_text(text) == pieces


def test_a_tiny_opening_word_moves_the_cut_to_the_next_clause() -> None:
    text = "Well, I really think so, and you should know it too."
    assert split_text(text) == ["Well, I really think so,", "and you should know it too."]


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("This is it; the moment we waited for.", "This is it;"),
        ("Here is the plan: we win the game tonight.", "Here is the plan:"),
        ("And then it happened — nobody saw it coming.", "And then it happened"),
    ],
)
def test_clauses_end_at_semicolons_colons_and_dashes(text: str, first: str) -> None:
    assert split_text(text)[0] == first
    assert len(split_text(text)) == 2


def test_abbreviations_and_decimals_do_not_end_sentences() -> None:
    text = "Mr. Smith paid 3.50 dollars. Dr. Who did not."
    assert split_sentences(text) == ["Mr. Smith paid 3.50 dollars.", "Dr. Who did not."]


def test_sentences_end_at_question_marks_ellipses_quotes_and_line_breaks() -> None:
    text = 'Really?! I know… He said "stop." Then\nnew line'
    assert split_sentences(text) == ["Really?!", "I know…", 'He said "stop."', "Then", "new line"]


def test_a_long_first_sentence_without_clauses_is_cut_between_words() -> None:
    words = ["word"] * 60
    pieces = split_text(" ".join(words) + ".")
    assert all(len(piece) <= FIRST_MAX_CHARS for piece in pieces)
    assert " ".join(pieces).split() == words[:-1] + ["word."]


def test_a_long_later_sentence_is_cut_at_clauses_within_the_limit() -> None:
    clause = "this clause has exactly seven words here"
    sentence = ", ".join([clause] * 10) + "."
    pieces = split_text("Hello there friends. " + sentence, max_chars=100)
    assert pieces[0] == "Hello there friends."
    assert all(len(piece) <= 100 for piece in pieces)
    assert all(piece.endswith((",", ".")) for piece in pieces[1:])
    assert " ".join(pieces[1:]) == sentence


@pytest.mark.parametrize("text", ["", "   ", "\n\n"])
def test_empty_text_gives_no_pieces(text: str) -> None:
    assert split_text(text) == []


def test_pieces_keep_every_word_in_order_and_collapse_white_space() -> None:
    text = "  One,   two three four,\tfive six seven.  Eight!  Nine ten?  "
    pieces = split_text(text)
    assert " ".join(pieces).split() == text.split()
    assert all(piece == " ".join(piece.split()) for piece in pieces)


@pytest.mark.parametrize(
    ("text", "ready"),
    [
        ("Hello there, every", ""),  # a two-word clause is not cut off alone
        ("Okay, so", "Okay, "),  # an interjection is
        ("Welcome back everyone, to", "Welcome back everyone, "),
        ("It costs 3.5", ""),  # no white space after the "." yet: no sentence end
        ("It costs 3.", ""),
        ("Hi! How", "Hi! "),
        ("Mr. Smith is here. And", "Mr. Smith is here. "),  # an abbreviation is no end
        ("One. Two three four, five six", "One. Two three four, "),
        ("Line one\nline", "Line one\n"),
    ],
)
def test_ready_end_is_the_last_boundary_that_has_fully_arrived(text: str, ready: str) -> None:
    assert text[: ready_end(text)] == ready


def test_word_end_keeps_an_unfinished_word_back() -> None:
    assert word_end("and then we went to the sta") == len("and then we went to the")
    assert word_end("and then ") == len("and then")
    assert word_end("unfinis") == 0


@pytest.mark.parametrize(
    ("text", "piece"),
    [
        ("Short enough.", "Short enough."),  # fits: whole
        ("Okay, quick recap for the new people: we", "Okay, "),  # the last clause within
        ("The first stream says one. ", "The first stream says one. "),  # a clause, if short
        ("So what we are going to do next", "So what we are going to"),  # between words
        ("So what we are going to do", "So what we are going"),  # a tail of two words
        ("Mr. Smith went to the market today", "Mr. Smith went to the"),  # no sentence end
        ("Supercalifragilisticexpialidocious is it", "Supercalifragilisticexpialidocious"),
    ],
)
def test_piece_end_cuts_released_text_at_a_clause_else_between_words(text: str, piece: str) -> None:
    assert text[: piece_end(text, len(text), 24)] == piece


def test_a_flushed_buffer_comes_out_short_first_then_in_growing_pieces() -> None:
    text = "so what we are going to do next is rather simple and quick and fun to watch"
    feed = TextFeed(text, max_wait_s=60.0, language="en", now=0.0)
    assert feed.take(0.0, None) is None  # no boundary, the wait is long
    feed.add("", flush=True, end=False, now=0.0)
    first = feed.take(0.0, None, seconds_per_char=0.005)
    assert first is not None and len(first) <= FIRST_PIECE_CHARS
    # Its audio (about 1.2 s) plays while the rest is made: the rest needs no boundary.
    rest = feed.take(0.1, 1.3, seconds_per_char=0.005)
    assert rest is not None and f"{first} {rest}".split() == text.split()
    assert feed.take(0.2, 1.3, seconds_per_char=0.005) is None


def test_text_with_no_boundary_goes_out_before_the_listener_runs_dry() -> None:
    feed = TextFeed("", max_wait_s=60.0, language="en", now=0.0)
    feed.add("quick recap for the ne", flush=False, end=False, now=0.0)
    # 2 s of audio still to play: it waits for a boundary, until the engine's estimated
    # time for it (and a margin) before the end.
    assert feed.take(0.1, 2.0, seconds_per_char=0.005) is None
    due = feed.wake_at(0.1, 2.0, seconds_per_char=0.005)
    assert due is not None and 1.5 < due < 2.0
    assert feed.take(due, 2.0, seconds_per_char=0.005) == "quick recap for the"
    # Two words only: they wait (one lone word would sound cut off for nothing).
    feed = TextFeed("", max_wait_s=1.0, language="en", now=0.0)
    feed.add("quick recap ", flush=False, end=False, now=0.0)
    assert feed.take(0.5, 0.6, seconds_per_char=0.005) is None
    # The listener has run dry already: the wait before any audio applies again.
    feed.add("for the", flush=False, end=False, now=0.0)
    assert feed.take(0.7, 0.6, seconds_per_char=0.005) is None
    assert feed.take(1.0, 0.6, seconds_per_char=0.005) == "quick recap for"
