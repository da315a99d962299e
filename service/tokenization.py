"""Fast (Rust) tokenization of request inputs into model-ready sequences.

Called from a thread pool, or on the event loop for short requests: `tokenizers` releases the
GIL inside `encode_batch`, so tokenizing a long request overlaps with the batch the backend is
running; a short call holds it (`encode_all`). A request's inputs are encoded in one call.
Special tokens are never found by string: the tokenizer's own post-processor adds them, and
`special_tokens_mask` / `word_ids` / `offsets` come from the encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Encoding, Tokenizer

from bertserve.runtime.collation import ModelInput
from bertserve.service.errors import InvalidInputError, PayloadTooLargeError

TextInput = str | tuple[str, str]

# A call of at most this many characters encodes item by item with `Tokenizer.encode`, which holds
# the GIL (tens of microseconds); `encode_batch*` releases it, and getting it back means queueing
# behind every other Python thread for up to the switch interval: measured beside one busy Python
# thread, 1.18 ms per call of one sentence against 0.11 ms for `encode`.
HOLD_GIL_CHARS = 1024


def text_chars(inputs: Sequence[TextInput] | Sequence[Sequence[int]]) -> int:
    """Characters of a request's inputs (texts, text pairs; a token-id input counts its ids)."""
    total = 0
    for x in inputs:
        if isinstance(x, str):
            total += len(x)
        else:
            total += sum(len(part) if isinstance(part, str) else 1 for part in x)
    return total


def encode_all(
    tokenizer: Tokenizer, items: Sequence[TextInput], *, fast: bool = False, add_special_tokens: bool = True
) -> list[Encoding]:
    """`tokenizer.encode_batch` (`_fast`: without offsets) of `items`, or for a short call the same
    encodings one `encode` at a time (see HOLD_GIL_CHARS)."""
    if text_chars(items) <= HOLD_GIL_CHARS:
        return [
            tokenizer.encode(x, add_special_tokens=add_special_tokens)
            if isinstance(x, str)
            else tokenizer.encode(x[0], x[1], add_special_tokens=add_special_tokens)
            for x in items
        ]
    batch = tokenizer.encode_batch_fast if fast else tokenizer.encode_batch
    encodings: list[Encoding] = batch(list(items), add_special_tokens=add_special_tokens)
    return encodings


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


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """A text pair truncated and framed by `TextTokenizer` itself (see `_PairFrame`): what the
    classification path needs of an `Encoded` (length, truncation, model input), no offsets."""

    ids: NDArray[np.int64]
    type_ids: NDArray[np.int64]
    truncated: bool

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])

    def model_input(self, with_type_ids: bool) -> ModelInput:
        return ModelInput(self.ids, self.type_ids if with_type_ids else None)


@dataclass(frozen=True, slots=True)
class _PairFrame:
    """The special tokens the post-processor puts around and between a pair, read off a probe
    encoding: ``prefix + A + middle + B + suffix`` (BERT: [CLS] A [SEP] B [SEP]; RoBERTa:
    <s> A </s></s> B </s>), with the segment id of every part.

    NOTE: why not let `tokenizers` truncate pairs: its overflow handling merges every overflowing
    piece of A with every piece of B, which grows with the square of the pair's length (4 s for a
    pair of 16k characters a side, 26 s at 32k) and cannot be turned off. Encoding each side
    alone is linear; truncating longest-first here reproduces its result exactly."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    first_type: int
    second_type: int

    @classmethod
    def probe(cls, tokenizer: Tokenizer) -> _PairFrame | None:
        enc = tokenizer.encode("a", "b")
        seq = enc.sequence_ids
        try:
            a0, a1 = seq.index(0), len(seq) - seq[::-1].index(0)
            b0, b1 = seq.index(1), len(seq) - seq[::-1].index(1)
        except ValueError:
            return None
        if not (a1 <= b0 and all(x == 0 for x in seq[a0:a1]) and all(x == 1 for x in seq[b0:b1])):
            return None
        if any(x is not None for x in seq[:a0] + seq[a1:b0] + seq[b1:]):
            return None
        ids, types = enc.ids, enc.type_ids
        return cls(
            tuple(ids[:a0]),
            tuple(ids[a1:b0]),
            tuple(ids[b1:]),
            tuple(types[:a0]),
            tuple(types[a1:b0]),
            tuple(types[b1:]),
            types[a0],
            types[b0],
        )

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def frame(self, a: list[int], b: list[int], max_length: int) -> EncodedPair:
        n1, n2 = longest_first(len(a), len(b), max_length - self.n_special)
        ids = [*self.prefix, *a[:n1], *self.middle, *b[:n2], *self.suffix]
        types = [
            *self.prefix_types,
            *([self.first_type] * n1),
            *self.middle_types,
            *([self.second_type] * n2),
            *self.suffix_types,
        ]
        return EncodedPair(
            np.array(ids, dtype=np.int64), np.array(types, dtype=np.int64), (n1, n2) != (len(a), len(b))
        )


def longest_first(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """Lengths a pair keeps under `tokenizers`' longest_first truncation to `budget` content tokens
    (its `truncate_encodings`, case by case: nothing to cut; cut only the longer; cut both to half)."""
    if n1 + n2 <= budget:
        return n1, n2
    swap = n1 > n2
    short, long = (n2, n1) if swap else (n1, n2)
    long = short if short > budget else max(short, budget - short)
    if short + long > budget:
        short = budget // 2
        long = short + budget % 2
    return (long, short) if swap else (short, long)


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
        self._pair_frame = _PairFrame.probe(self._full)
        self.vocab_size = self._full.get_vocab_size(with_added_tokens=True)
        probe = self._full.encode("a")
        content = [i for i, special in enumerate(probe.special_tokens_mask) if not special]
        first, last = content[0], content[-1]
        self._single_prefix = (probe.ids[:first], probe.type_ids[:first])
        self._single_suffix = (probe.ids[last + 1 :], probe.type_ids[last + 1 :])
        self._single_type = probe.type_ids[first]

    def encode(self, inputs: Sequence[TextInput], *, truncate: bool) -> list[Encoded | EncodedPair]:
        """Encode a request's inputs (texts or text pairs) with special tokens, in one call.

        With `truncate=False` an input longer than `max_length` raises `PayloadTooLargeError`
        naming its token count. Classification needs no offsets, so this takes the faster path
        that skips offset tracking (`encode_documents` keeps them for NER). Truncated pairs are
        framed here (`_PairFrame`), in time linear in their length.
        """
        pairs = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
        if truncate and pairs and self._pair_frame is not None:
            return self._encode_with_pairs(inputs, pairs)
        return list(self._encode_tokenizers(inputs, truncate=truncate))

    def _encode_with_pairs(
        self, inputs: Sequence[TextInput], pairs: list[int]
    ) -> list[Encoded | EncodedPair]:
        frame = self._pair_frame
        assert frame is not None
        out: list[Encoded | EncodedPair | None] = [None] * len(inputs)
        singles = [i for i in range(len(inputs)) if isinstance(inputs[i], str)]
        if singles:
            for i, enc in zip(
                singles, self._encode_tokenizers([inputs[i] for i in singles], truncate=True), strict=True
            ):
                out[i] = enc
        sides = [side for i in pairs for side in inputs[i]]
        encodings = encode_all(self._full, sides, fast=True, add_special_tokens=False)
        for k, i in enumerate(pairs):
            a, b = encodings[2 * k].ids, encodings[2 * k + 1].ids
            out[i] = frame.frame(a, b, self.max_length)
        return [x for x in out if x is not None]

    def _encode_tokenizers(self, inputs: Sequence[TextInput], *, truncate: bool) -> list[Encoded]:
        if truncate:
            encodings = encode_all(self._truncating, inputs, fast=True)
            # NOTE: with stride 0 the tokenizer puts the cut-off tail in `overflowing`.
            return [Encoded(e, bool(e.overflowing)) for e in encodings]
        encodings = encode_all(self._full, inputs, fast=True)
        for index, enc in enumerate(encodings):
            if len(enc.ids) > self.max_length:
                raise PayloadTooLargeError(
                    f"input {index} has {len(enc.ids)} tokens, more than the model's maximum of "
                    f"{self.max_length}; shorten it or send truncate=true"
                )
        return [Encoded(e, False) for e in encodings]

    def encode_documents(self, texts: Sequence[TextInput]) -> list[Encoded]:
        """Whole texts (or pairs) with special tokens and offsets, never truncated: NER's documents
        and long texts to classify, which `bertserve.service.windowing.plan_windows` cuts into
        windows that fit the model."""
        return [Encoded(e, False) for e in encode_all(self._full, texts)]

    def frame_ids(
        self, token_ids: Sequence[Sequence[int]], *, truncate: bool, framed: bool = False
    ) -> list[EncodedPair]:
        """Sequences given as token ids (clients that tokenize themselves, e.g. OpenAI's
        `input: [[ids]]`): each is framed by the special tokens a text gets, and cut to
        `max_length` (or refused with 413 when `truncate` is off). Ids outside the vocabulary
        are refused. `framed`: the ids already hold the special tokens (the model's whole input,
        as its tokenizer gives it: Open Inference Protocol clients); they are taken as they are,
        and one over `max_length` is refused, since a cut would drop its closing token."""
        (pre, pre_t), (suf, suf_t) = self._single_prefix, self._single_suffix
        if framed:
            pre, pre_t, suf, suf_t = [], [], [], []
            truncate = False
        room = self.max_length - len(pre) - len(suf)
        out = []
        for index, ids in enumerate(token_ids):
            bad = next((x for x in ids if not 0 <= x < self.vocab_size), None)
            if bad is not None:
                raise InvalidInputError(
                    f"input {index}: token id {bad} is outside the model's vocabulary "
                    f"(0..{self.vocab_size - 1})"
                )
            if len(ids) > room and not truncate:
                raise PayloadTooLargeError(
                    f"input {index} has {len(ids) + len(pre) + len(suf)} tokens, more than the "
                    f"model's maximum of {self.max_length}; shorten it or send truncate=true"
                )
            kept = list(ids[:room])
            out.append(
                EncodedPair(
                    np.array([*pre, *kept, *suf], dtype=np.int64),
                    np.array([*pre_t, *([self._single_type] * len(kept)), *suf_t], dtype=np.int64),
                    len(kept) < len(ids),
                )
            )
        return out

    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool, truncate: bool) -> list[Encoded]:
        """What `/tokenize` shows: every token with its id, text and character offsets, as the
        model would read it (`truncate`: cut at `max_length`, as the inference routes do)."""
        tokenizer = self._truncating if truncate else self._full
        encodings = encode_all(tokenizer, texts, add_special_tokens=add_special_tokens)
        return [Encoded(e, bool(e.overflowing)) for e in encodings]
