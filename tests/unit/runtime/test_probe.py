"""The bf16 warm-up check's decision agreement: counted as the export counts decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bertserve.modelrepo import EmbeddingConfig, ModelConfig, Pooling, ProblemType, Task, VersionConfig
from bertserve.runtime.probe import PROBE_SENTENCES, decision_agreement, probe_feeds


def config(task: Task, labels: list[str], problem_type: ProblemType | None = None) -> ModelConfig:
    embedding = (
        EmbeddingConfig(pooling=Pooling.MEAN, dimensions=3) if task == Task.FEATURE_EXTRACTION else None
    )
    return ModelConfig(
        name="m",
        task=task,
        architecture="bert",
        labels=labels,
        problem_type=problem_type,
        embedding=embedding,
        max_length=16,
        inputs=["input_ids", "attention_mask"],
        versions={1: VersionConfig(artifacts=[])},
    )


def test_classes_per_row() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    cand = np.array([[0.9, 0.1], [0.6, 0.4], [2.0, 1.1], [0.1, 2.9]], dtype=np.float32)
    mask = np.ones((4, 3), dtype=np.int64)
    assert decision_agreement(ref, cand, mask, config(Task.TEXT_CLASSIFICATION, ["a", "b"])) == 0.75


def test_sigmoid_models_count_each_label_by_its_sign() -> None:
    ref = np.array([[1.0, -1.0], [-0.5, 0.5]], dtype=np.float32)
    cand = np.array([[0.5, 0.2], [-0.1, 0.4]], dtype=np.float32)
    mask = np.ones((2, 3), dtype=np.int64)
    multi = config(Task.TEXT_CLASSIFICATION, ["a", "b"], ProblemType.MULTI_LABEL)
    assert decision_agreement(ref, cand, mask, multi) == 0.75
    one = config(Task.TEXT_CLASSIFICATION, ["relevant"])
    assert decision_agreement(ref[:, :1], -ref[:, :1], mask, one) == 0.0  # an argmax would say 1.0


def test_tags_count_on_real_tokens_only() -> None:
    ref = np.zeros((1, 3, 2), dtype=np.float32)
    ref[0, :, 0] = 1.0
    cand = ref.copy()
    cand[0, 2] = [0.0, 1.0]  # a padding position disagrees: not counted
    cand[0, 1] = [0.0, 1.0]
    mask = np.array([[1, 1, 0]], dtype=np.int64)
    assert decision_agreement(ref, cand, mask, config(Task.TOKEN_CLASSIFICATION, ["O", "B-PER"])) == 0.5


def test_embeddings_by_cosine() -> None:
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    cand = np.array([[2.0, 0.01, 0.0], [1.0, 1.0, 0.0]], dtype=np.float32)
    mask = np.ones((2, 3), dtype=np.int64)
    assert decision_agreement(ref, cand, mask, config(Task.FEATURE_EXTRACTION, [])) == 0.5


def test_probe_masks_padding_of_a_tokenizer_saved_with_padding(tmp_path: Path) -> None:
    """transformers saves tokenizer.json with BatchLongest padding: the probe must still mask the
    pad tokens of its shorter sentences, not count them as real ones."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = sorted({w for s in PROBE_SENTENCES for w in s.replace(".", " . ").replace(",", " , ").split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    feeds, mask = probe_feeds(config(Task.TEXT_CLASSIFICATION, ["a", "b"]), tmp_path)
    tokenizer.no_padding()
    lengths = [len(e.ids) for e in tokenizer.encode_batch(list(PROBE_SENTENCES))]
    assert mask.sum(axis=1).tolist() == [min(n, 16) for n in lengths]
    assert len(set(lengths)) > 1  # some rows are padded
    assert (feeds["input_ids"][mask == 0] == 0).all()
