"""Entity spans worked out by the test itself, to check offsets against something the code under
test did not compute (comparing `text[start:end]` with an entity's `text` proves nothing: the code
cuts that text from the very same span)."""

from __future__ import annotations

from collections.abc import Sequence


def spans_in_order(text: str, pieces: Sequence[str]) -> list[tuple[int, int]]:
    """(start, end) of each piece in `text`, in code points, each found after the previous one, so
    a repeated word gets its own occurrence."""
    spans, at = [], 0
    for piece in pieces:
        start = text.index(piece, at)
        spans.append((start, start + len(piece)))
        at = start + len(piece)
    return spans
