"""Fast (Rust) tokenization of request inputs into model-ready sequences.

Called from a thread pool: `tokenizers` releases the GIL inside `encode_batch`, so tokenizing
the next requests overlaps with the batch the backend is running. A request's inputs are encoded
in one call. Special tokens are never found by string: the tokenizer's own post-processor adds
them, and `special_tokens_mask` / `word_ids` / `offsets` come from the encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Encoding, Tokenizer

from service.errors import PayloadTooLargeError

TextInput = str | tuple[str, str]


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One sequence as the batcher pads it: token ids with special tokens, optional segment ids."""

    ids: NDArray[np.int64]
    type_ids: NDArray[np.int64] | None = None  # None = all zeros (single sentences)

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True, slots=True)
class Encoded:
    """One tokenized input. The Rust `Encoding` is kept so offsets and word ids are only
    materialised (as Python lists) by the heads that need them, i.e. NER, not classification."""

    encoding: Encoding
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.encoding.ids)

    @property
    def ids(self) -> list[int]:
        return list(self.encoding.ids)

    @property
    def type_ids(self) -> list[int]:
        return list(self.encoding.type_ids)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        return list(self.encoding.offsets)

    @property
    def word_ids(self) -> list[int | None]:
        return list(self.encoding.word_ids)

    @property
    def special_tokens_mask(self) -> list[int]:
        return list(self.encoding.special_tokens_mask)

    def model_input(self, with_type_ids: bool) -> ModelInput:
        ids = np.array(self.encoding.ids, dtype=np.int64)
        types = np.array(self.encoding.type_ids, dtype=np.int64) if with_type_ids else None
        return ModelInput(ids, types)


class TextTokenizer:
    """Wraps one `tokenizer.json`. Two configured copies are kept instead of toggling truncation
    per call, because a `tokenizers.Tokenizer` is shared by the pool's threads."""

    def __init__(self, path: Path, max_length: int) -> None:
        self.max_length = max_length
        self._truncating = Tokenizer.from_file(str(path))
        self._truncating.no_padding()  # the batcher pads, to the longest in the batch only
        self._truncating.enable_truncation(max_length)
        self._full = Tokenizer.from_file(str(path))
        self._full.no_padding()
        self._full.no_truncation()
        frame = self._full.encode("").ids  # what the post-processor wraps around a sequence
        if len(frame) < 2:
            raise ValueError(f"{path}: tokenizer adds no [CLS]/[SEP]-style special tokens")
        self.num_special_tokens = len(frame)  # per single-text sequence, e.g. [CLS] + [SEP]

    def encode(self, inputs: Sequence[TextInput], *, truncate: bool) -> list[Encoded]:
        """Encode a request's inputs (texts or text pairs) with special tokens, in one call.

        With `truncate=False` an input longer than `max_length` raises `PayloadTooLargeError`
        naming its token count. Classification needs no offsets, so this takes the faster path
        that skips offset tracking (`encode_documents` keeps them for NER).
        """
        if truncate:
            encodings = self._truncating.encode_batch_fast(list(inputs))
            # NOTE: with stride 0 the tokenizer puts the cut-off tail in `overflowing`.
            return [Encoded(e, bool(e.overflowing)) for e in encodings]
        encodings = self._full.encode_batch_fast(list(inputs))
        for index, enc in enumerate(encodings):
            if len(enc.ids) > self.max_length:
                raise PayloadTooLargeError(
                    f"input {index} has {len(enc.ids)} tokens, more than the model's maximum of "
                    f"{self.max_length}; shorten it or send truncate=true"
                )
        return [Encoded(e, False) for e in encodings]

    def encode_documents(self, texts: Sequence[str]) -> list[Encoded]:
        """Whole texts with special tokens and offsets, never truncated: NER's documents, which
        `service.windowing.plan_windows` cuts into windows that fit the model."""
        return [Encoded(e, False) for e in self._full.encode_batch(list(texts))]
