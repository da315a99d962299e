"""Fixtures for the NER unit tests: a real WordPiece fast tokenizer built with `tokenizers` only
(no torch, no transformers), so offsets, word ids and special-token masks are the genuine ones."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = (
    "angela merkel met emmanuel macron in brussels on monday",
    "john smith lives in new york and works for the united nations",
    "the company google opened a new office in berlin , said a spokesman",
    "mary visited paris last summer with her friends from london !",
    "the museum in amsterdam has paintings by rembrandt and van gogh",
    "zurich , sao paulo and cafe au lait are not in the vocabulary , are they ?",
)


@pytest.fixture(scope="session")
def wordpiece() -> Tokenizer:
    """A BERT-style uncased tokenizer: lower-casing and accent stripping, CJK characters split
    into words, punctuation split off, `##` continuation pieces, `[CLS] $A [SEP]` post-processing."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok
