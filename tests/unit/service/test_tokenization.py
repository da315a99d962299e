from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.errors import PayloadTooLargeError
from service.tokenization import TextTokenizer
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
