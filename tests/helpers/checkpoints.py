"""Builders for tiny, random, offline Hugging Face checkpoints with a real fast tokenizer.

Every checkpoint is saved the way a fine-tuning run would save it: `config.json` with labels,
`model.safetensors`, and a fast tokenizer (`tokenizer.json` + the slow-compatible files). The
tokenizer is a genuine WordPiece model trained in milliseconds on the small built-in corpus below,
so tokenization, padding, pairs and offsets behave like a real BERT tokenizer, only with a small
vocabulary. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertTokenizerFast,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaTokenizerFast,
)

# A few hundred words of ordinary English: enough for WordPiece to learn whole words and
# sub-words, and for the service tests to send sentences that tokenize to something sensible.
CORPUS: tuple[str, ...] = (
    "the movie was great and the actors were wonderful",
    "i did not like this film at all , it was boring and far too long",
    "an absolutely brilliant performance by the whole cast",
    "the plot made no sense and the ending was terrible",
    "john smith lives in new york and works for the united nations",
    "mary visited paris last summer with her friends from london",
    "the company google opened a new office in berlin",
    "angela merkel met emmanuel macron in brussels on monday",
    "a quiet , thoughtful story about family and friendship",
    "worst service ever , the food was cold and the waiter was rude",
    "i love this place , the staff are friendly and the coffee is excellent",
    "the weather in seattle is rainy but the city is beautiful",
    "microsoft and apple announced new products at the conference in san francisco",
    "she read the book twice because she enjoyed it so much",
    "the team won the championship after a difficult season",
    "nobody expected the results to be this good",
    "please call me tomorrow morning before nine",
    "the museum in amsterdam has paintings by rembrandt and van gogh",
    "my flight to tokyo was delayed by three hours",
    "this product broke after two days , do not buy it",
    "what a fantastic experience , we will definitely come back",
    "the report was published by the world health organization",
    "barack obama was born in hawaii",
    "the river flows through the old town towards the sea",
    "is this the right way to the station ?",
    "they released an update that fixed most of the bugs",
    "honestly the sequel is better than the original",
    "running , jumping , swimming and cycling are popular sports",
    "unbelievable ! the cheapest hotel had the nicest rooms",
    "amazon delivered the package to my neighbour in dublin",
)

SPECIAL_BERT = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SPECIAL_ROBERTA = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")

NER_LABELS_IOB2: tuple[str, ...] = (
    "O",
    "B-PER",
    "I-PER",
    "B-LOC",
    "I-LOC",
    "B-ORG",
    "I-ORG",
    "B-MISC",
    "I-MISC",
)
NER_LABELS_BIOES: tuple[str, ...] = (
    "O",
    *(f"{prefix}-{kind}" for kind in ("PER", "LOC", "ORG", "MISC") for prefix in ("B", "I", "E", "S")),
)
SENTIMENT_LABELS: tuple[str, ...] = ("NEGATIVE", "POSITIVE")
TOPIC_LABELS: tuple[str, ...] = ("sports", "politics", "business", "travel")
SCORER_LABELS: tuple[str, ...] = ("relevance",)

# Small enough that building + exporting a model takes well under a second, big enough to have
# real attention (several heads, two layers) for the ORT fusions to find.
TINY_DIMS: dict[str, int] = {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 64, "positions": 128}
# Wider than BERT's 0.02 so that a random model makes confident, input-dependent predictions:
# with 0.02 every logit is ~0 and int8 "agreement" would measure noise, not quantization error.
TINY_INIT_RANGE = 0.3


@dataclass(frozen=True)
class TinyCheckpoint:
    """What a builder wrote: the folder and the facts tests compare the export with."""

    path: Path
    architecture: str
    task: str
    labels: tuple[str, ...]
    problem_type: str | None = None


def _wordpiece_tokenizer(vocab_size: int = 400) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_BERT))
    tok.train_from_iterator(CORPUS, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def bert_tokenizer(model_max_length: int = TINY_DIMS["positions"]) -> BertTokenizerFast:
    return BertTokenizerFast(tokenizer_object=_wordpiece_tokenizer(), model_max_length=model_max_length)


def distilbert_tokenizer(model_max_length: int = TINY_DIMS["positions"]) -> DistilBertTokenizerFast:
    return DistilBertTokenizerFast(tokenizer_object=_wordpiece_tokenizer(), model_max_length=model_max_length)


def roberta_tokenizer(model_max_length: int = TINY_DIMS["positions"]) -> RobertaTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_ROBERTA),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>"))
    )
    return RobertaTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length)


def _label_maps(labels: Sequence[str]) -> dict[str, Any]:
    return {
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def _bert_config(tokenizer: PreTrainedTokenizerFast, labels: Sequence[str], **extra: Any) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_DIMS["hidden"],
        num_hidden_layers=TINY_DIMS["layers"],
        num_attention_heads=TINY_DIMS["heads"],
        intermediate_size=TINY_DIMS["intermediate"],
        max_position_embeddings=TINY_DIMS["positions"],
        initializer_range=TINY_INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id,
        **_label_maps(labels),
        **extra,
    )


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast | None, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def build_bert_classifier(
    path: Path,
    labels: Sequence[str] = SENTIMENT_LABELS,
    *,
    multi_label: bool = False,
    seed: int = 0,
) -> TinyCheckpoint:
    """A BertForSequenceClassification; `multi_label=True` sets problem_type accordingly."""
    torch.manual_seed(seed)
    tokenizer = bert_tokenizer()
    problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    config = _bert_config(tokenizer, labels, problem_type=problem_type)
    _save(BertForSequenceClassification(config).eval(), tokenizer, path)
    return TinyCheckpoint(path, "bert", "text-classification", tuple(labels), problem_type)


def build_bert_multilabel(path: Path, labels: Sequence[str] = TOPIC_LABELS, seed: int = 0) -> TinyCheckpoint:
    return build_bert_classifier(path, labels, multi_label=True, seed=seed)


def build_bert_scorer(path: Path, seed: int = 0) -> TinyCheckpoint:
    """A cross-encoder-shaped BertForSequenceClassification with one logit (a relevance score)."""
    return build_bert_classifier(path, SCORER_LABELS, seed=seed)


def build_distilbert_classifier(
    path: Path, labels: Sequence[str] = SENTIMENT_LABELS, seed: int = 0
) -> TinyCheckpoint:
    torch.manual_seed(seed)
    tokenizer = distilbert_tokenizer()
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=TINY_DIMS["hidden"],
        n_layers=TINY_DIMS["layers"],
        n_heads=TINY_DIMS["heads"],
        hidden_dim=TINY_DIMS["intermediate"],
        max_position_embeddings=TINY_DIMS["positions"],
        initializer_range=TINY_INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id,
        problem_type="single_label_classification",
        **_label_maps(labels),
    )
    _save(DistilBertForSequenceClassification(config).eval(), tokenizer, path)
    return TinyCheckpoint(
        path, "distilbert", "text-classification", tuple(labels), "single_label_classification"
    )


def build_bert_token_classifier(
    path: Path, labels: Sequence[str] = NER_LABELS_IOB2, seed: int = 0
) -> TinyCheckpoint:
    """A BertForTokenClassification; pass `labels=NER_LABELS_BIOES` for a BIOES tagger."""
    torch.manual_seed(seed)
    tokenizer = bert_tokenizer()
    config = _bert_config(tokenizer, labels)
    _save(BertForTokenClassification(config).eval(), tokenizer, path)
    return TinyCheckpoint(path, "bert", "token-classification", tuple(labels))


def build_bert_bioes_tagger(path: Path, seed: int = 0) -> TinyCheckpoint:
    return build_bert_token_classifier(path, NER_LABELS_BIOES, seed=seed)


def build_roberta_classifier(
    path: Path, labels: Sequence[str] = SENTIMENT_LABELS, seed: int = 0
) -> TinyCheckpoint:
    torch.manual_seed(seed)
    tokenizer = roberta_tokenizer()
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_DIMS["hidden"],
        num_hidden_layers=TINY_DIMS["layers"],
        num_attention_heads=TINY_DIMS["heads"],
        intermediate_size=TINY_DIMS["intermediate"],
        # RoBERTa counts positions from pad_token_id + 1
        max_position_embeddings=TINY_DIMS["positions"] + 2,
        initializer_range=TINY_INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        type_vocab_size=1,
        problem_type="single_label_classification",
        **_label_maps(labels),
    )
    _save(RobertaForSequenceClassification(config).eval(), tokenizer, path)
    return TinyCheckpoint(
        path, "roberta", "text-classification", tuple(labels), "single_label_classification"
    )


def build_bare_bert(path: Path, seed: int = 0) -> TinyCheckpoint:
    """A BertModel without any head (like the packaged MiniLM backbone): export must refuse it."""
    torch.manual_seed(seed)
    tokenizer = bert_tokenizer()
    _save(BertModel(_bert_config(tokenizer, SENTIMENT_LABELS)).eval(), tokenizer, path)
    return TinyCheckpoint(path, "bert", "feature-extraction", SENTIMENT_LABELS)


def build_pickle_classifier(path: Path, seed: int = 0) -> TinyCheckpoint:
    """A BERT classifier saved as pytorch_model.bin (pickle) only."""
    torch.manual_seed(seed)
    tokenizer = bert_tokenizer()
    config = _bert_config(tokenizer, SENTIMENT_LABELS, problem_type="single_label_classification")
    path.mkdir(parents=True, exist_ok=True)
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=False)
    tokenizer.save_pretrained(path)
    return TinyCheckpoint(
        path, "bert", "text-classification", SENTIMENT_LABELS, "single_label_classification"
    )


def build_sentence_transformer(
    path: Path, *, pooling: str = "mean", normalize: bool = True, max_seq_length: int = 48, seed: int = 0
) -> TinyCheckpoint:
    """A sentence-transformers folder as `SentenceTransformer.save` writes it: a tiny BertModel
    with its tokenizer at the top, `modules.json` (Transformer, Pooling[, Normalize]),
    `1_Pooling/config.json` with one pooling mode (mean, cls, lasttoken, max) and
    `sentence_bert_config.json` with the max length."""
    import json

    torch.manual_seed(seed)
    tokenizer = bert_tokenizer()
    model = BertModel(_bert_config(tokenizer, SENTIMENT_LABELS), add_pooling_layer=False).eval()
    _save(model, tokenizer, path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (path / "2_Normalize").mkdir()
    (path / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    modes = {"mean": "mean_tokens", "cls": "cls_token", "max": "max_tokens", "lasttoken": "lasttoken"}
    pool_config: dict[str, Any] = {"word_embedding_dimension": TINY_DIMS["hidden"]}
    pool_config.update({f"pooling_mode_{mode}": mode == modes[pooling] for mode in modes.values()})
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pool_config), encoding="utf-8")
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}), encoding="utf-8"
    )
    return TinyCheckpoint(path, "bert", "feature-extraction", ())
