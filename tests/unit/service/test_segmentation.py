"""service/segmentation.py: line and sentence spans in the original text's character offsets."""

from __future__ import annotations

import itertools

import pytest

from bertserve.modelrepo import Segmentation
from bertserve.service.segmentation import segment


def pieces(text: str, mode: Segmentation) -> list[str]:
    return [text[start:end] for start, end in segment(text, mode)]


def test_none_is_the_whole_text() -> None:
    text = "One. Two.\nThree"
    assert segment(text, Segmentation.NONE) == [(0, len(text))]


def test_lines_split_on_every_line_break_and_drop_blank_lines() -> None:
    text = " first line \r\n\n\tsecond\u2028third\rfourth\n   \n"
    assert pieces(text, Segmentation.LINES) == ["first line", "second", "third", "fourth"]


def test_sentences_keep_abbreviations_decimals_and_initials_together() -> None:
    text = "Dr. Smith paid $3.50 in Washington D.C. on Monday. He met Mr. Jones!  Then they left...\nNo stop"
    assert pieces(text, Segmentation.SENTENCES) == [
        "Dr. Smith paid $3.50 in Washington D.C. on Monday.",
        "He met Mr. Jones!",
        "Then they left...",
        "No stop",
    ]


@pytest.mark.parametrize("mode", list(Segmentation))
def test_offsets_are_code_points_of_the_text_as_sent(mode: Segmentation) -> None:
    text = "Café in Zürich 😀 is great.  東京に行った。 Émile met 👩‍👩‍👧 José!\n\nÇa va? Oui."
    spans = segment(text, mode)
    assert spans == sorted(spans) and all(a < b for a, b in spans)
    assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(spans))
    for start, end in spans:
        piece = text[start:end]
        assert piece == piece.strip() and piece
    # nothing but whitespace is left out
    covered = {i for a, b in spans for i in range(a, b)}
    assert all(text[i].isspace() for i in range(len(text)) if i not in covered)
    if mode is Segmentation.SENTENCES:
        assert "Ça va?" in pieces(text, mode) and "Émile met 👩‍👩‍👧 José!" in pieces(text, mode)


@pytest.mark.parametrize("text", ["", "   ", "\n\n"])
def test_a_text_without_content_is_one_segment(text: str) -> None:
    assert segment(text, Segmentation.SENTENCES) == [(0, len(text))]
