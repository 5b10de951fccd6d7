"""The Japanese splitter: clause by clause, the first one alone, mixed English kept whole."""

from __future__ import annotations

import pytest

from aivtuber_tts.splitting_ja import ready_end_japanese, split_japanese, word_end_japanese


def test_first_clause_goes_alone_then_short_clauses_are_grouped() -> None:
    text = "こんにちは、みなさん！今日はゲームをやります。それでは、始めましょう。よろしくね。"
    assert split_japanese(text) == [
        "こんにちは、",
        "みなさん！今日はゲームをやります。",  # "みなさん！" alone is under min_chars
        "それでは、始めましょう。よろしくね。",  # a short tail joins the piece before
    ]


@pytest.mark.parametrize(
    "text",
    [
        "えっと、これは、テストです。",
        "えっと，これは，テストです．",  # full-width comma and period
        "えっと、これは、テストです！",
        "えっと、これは、テストです？",
    ],
)
def test_every_japanese_punctuation_form_ends_a_clause(text: str) -> None:
    pieces = split_japanese(text, min_chars=1)
    assert len(pieces) == 3 and "".join(pieces) == text


def test_concatenated_pieces_give_back_the_text() -> None:
    text = "今日の配信は、新しいゲームをやってみます！みんな、コメントしてね。"
    assert "".join(split_japanese(text)) == text


def test_mixed_english_words_and_numbers_stay_whole() -> None:
    text = "今日はMinecraftをやります。Let's go, everyone! 3,000円でVer.2を買いました。"
    pieces = split_japanese(text, min_chars=1)
    joined = " ".join(pieces)
    for word in ("Minecraft", "Let's", "everyone!", "3,000円", "Ver.2"):
        assert word in joined
    assert pieces[0] == "今日はMinecraftをやります。"
    assert "Let's go," in pieces and "everyone!" in pieces


def test_closing_brackets_and_repeated_marks_stay_with_their_sentence() -> None:
    pieces = split_japanese("「すごい！！」と言った。本当にすごかったよ。", min_chars=1)
    assert pieces == ["「すごい！！」", "と言った。", "本当にすごかったよ。"]


def test_a_long_unpunctuated_run_is_cut_without_breaking_words() -> None:
    text = "あいうえお" * 30 + "Minecraft"
    pieces = split_japanese(text, max_chars=40)
    assert all(len(piece) <= 40 for piece in pieces)
    assert "".join(pieces) == text
    assert any("Minecraft" in piece for piece in pieces)


def test_empty_and_punctuation_only_input() -> None:
    assert split_japanese("") == []
    assert split_japanese("   \n ") == []
    assert split_japanese("。") == ["。"]


def test_ready_end_japanese_waits_for_the_character_after_a_boundary() -> None:
    assert ready_end_japanese("こんにちは、", first=True) == 0  # "」" or "！" may follow
    assert ready_end_japanese("こんにちは、み", first=True) == len("こんにちは、")
    # After the first clause, pieces gather min_chars spoken characters.
    assert ready_end_japanese("はい、今日は", first=False) == 0
    text = "今日はいい天気ですね。明日"
    assert ready_end_japanese(text, first=False) == len("今日はいい天気ですね。")


def test_word_end_japanese_never_cuts_a_latin_word() -> None:
    assert word_end_japanese("日本語abc") == len("日本語")
    assert word_end_japanese("日本語") == len("日本語")
