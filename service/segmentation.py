"""Cutting a text into the units a token-classification model reads: lines or sentences.

NER models are trained on single sentences (CoNLL, WNUT, OntoNotes are all sentence-level), and a
small one answers differently when other sentences surround it: read whole, a document gets
entities that the same sentences sent one by one do not. With ``segmentation: sentences`` (in
model.yaml, or per request) every sentence is its own sequence; with ``lines`` every line is. The
segments keep their character positions, so entities still point into the text as sent, and a
segment longer than the model is windowed like any long text.

Line breaks are hard boundaries. Sentences inside a line come from `sentencex` (Wikimedia's
rule-based segmenter: abbreviations, decimals, initials, ~300 languages; a compiled extension
that splits megabytes per second).
"""

from __future__ import annotations

import re

from bertserve.modelrepo import Segmentation

__all__ = ["Span", "segment"]

Span = tuple[int, int]
# the line separators str.splitlines() knows, "\r\n" as one break
_LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _trimmed(text: str, start: int, end: int) -> Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _sentences(line: str, language: str) -> list[Span]:
    from sentencex import get_sentence_boundaries

    return [(int(b["start_index"]), int(b["end_index"])) for b in get_sentence_boundaries(language, line)]


def segment(text: str, mode: Segmentation, language: str = "en") -> list[Span]:
    """`(start, end)` character spans of the text's segments, in order, without surrounding
    whitespace; the whole text (one span) for `Segmentation.NONE` or a text with no content."""
    if mode is Segmentation.NONE:
        return [(0, len(text))]
    spans: list[Span] = []
    position = 0
    breaks = [(m.start(), m.end()) for m in _LINE_BREAK.finditer(text)] + [(len(text), len(text))]
    for line_end, next_start in breaks:
        line = text[position:line_end]
        split = mode is Segmentation.SENTENCES and line.strip()
        pieces = _sentences(line, language) if split else [(0, len(line))]
        for start, end in pieces:
            span = _trimmed(text, position + start, position + end)
            if span is not None:
                spans.append(span)
        position = next_start
    return spans or [(0, len(text))]
