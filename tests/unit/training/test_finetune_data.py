"""Data loaders of `bertserve finetune`: CSV/TSV/CoNLL parsing, label resolution, error messages.

The files are read by `bertserve.evaluation.datasets`; `read_training_data` is how finetune reads them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bertserve.evaluation.datasets import TaggedSentence as TaggedExample
from bertserve.export.errors import ExportError
from bertserve.modelrepo import Task
from bertserve.training.finetune import check_iob2, read_training_data, resolve_labels


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_without_header(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", 'great "film"\tPOSITIVE\n\nawful\tNEGATIVE\n')
    examples = read_training_data(Task.TEXT_CLASSIFICATION, path)
    assert [(e.text, e.label) for e in examples] == [('great "film"', "POSITIVE"), ("awful", "NEGATIVE")]


def test_csv_with_header_in_any_column_order_and_quoted_commas(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'id,label,sentence\n1,pos,"loved it, truly"\n2,neg,meh\n')
    examples = read_training_data(Task.TEXT_CLASSIFICATION, path)
    assert [(e.text, e.label) for e in examples] == [("loved it, truly", "pos"), ("meh", "neg")]


def test_tsv_with_wrong_column_count_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", "a\tb\tc\n")
    with pytest.raises(ExportError, match=r"d.tsv:1: expected two columns"):
        read_training_data(Task.TEXT_CLASSIFICATION, path)


def test_empty_label_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", "text\tlabel\nfine\tPOSITIVE\nno label\t \n")
    with pytest.raises(ExportError, match=r"d.tsv:3: empty text or label"):
        read_training_data(Task.TEXT_CLASSIFICATION, path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        read_training_data(Task.TEXT_CLASSIFICATION, tmp_path / "nope.tsv")


def test_conll_sentences_and_docstart(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.conll",
        "-DOCSTART-\tO\n\nAngela\tB-PER\nMerkel\tI-PER\nspoke\tO\n\nin\tO\nParis\tB-LOC\n",
    )
    sentences = read_training_data(Task.TOKEN_CLASSIFICATION, path)
    assert sentences == [
        TaggedExample(("Angela", "Merkel", "spoke"), ("B-PER", "I-PER", "O")),
        TaggedExample(("in", "Paris"), ("O", "B-LOC")),
    ]


def test_conll_line_without_tag(tmp_path: Path) -> None:
    path = write(tmp_path, "d.conll", "Angela\tB-PER\nMerkel\n")
    with pytest.raises(ExportError, match=r"d.conll:2: expected 'token<TAB>tag'"):
        read_training_data(Task.TOKEN_CLASSIFICATION, path)


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (("O", "I-PER"), "IOB2 needs B-PER first"),
        (("B-LOC", "I-PER"), "IOB2 needs B-PER first"),
        (("PER",), "is not O, B-<type> or I-<type>"),
        (("S-PER",), "is not O, B-<type> or I-<type>"),
    ],
)
def test_iob2_violations(tmp_path: Path, tags: tuple[str, ...], message: str) -> None:
    sentence = TaggedExample(tuple(f"w{i}" for i in range(len(tags))), tags)
    with pytest.raises(ExportError, match=message):
        check_iob2([sentence], tmp_path / "d.conll")


def test_valid_iob2_passes(tmp_path: Path) -> None:
    check_iob2([TaggedExample(("a", "b", "c"), ("B-PER", "I-PER", "B-PER"))], tmp_path / "d.conll")


def test_labels_inferred_for_classification_are_sorted(tmp_path: Path) -> None:
    labels = resolve_labels(Task.TEXT_CLASSIFICATION, ["POSITIVE", "NEGATIVE", "POSITIVE"], None, tmp_path)
    assert labels == ("NEGATIVE", "POSITIVE")


def test_labels_inferred_for_tagging_put_o_first_and_pair_prefixes(tmp_path: Path) -> None:
    labels = resolve_labels(Task.TOKEN_CLASSIFICATION, ["B-PER", "O", "B-LOC", "I-LOC"], None, tmp_path)
    assert labels == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")


def test_given_labels_keep_their_order_and_must_cover_the_data(tmp_path: Path) -> None:
    given = ("POSITIVE", "NEGATIVE")
    assert resolve_labels(Task.TEXT_CLASSIFICATION, ["NEGATIVE"], given, tmp_path) == given
    with pytest.raises(ExportError, match=r"label\(s\) \['NEUTRAL'\] are not in --labels"):
        resolve_labels(Task.TEXT_CLASSIFICATION, ["NEUTRAL"], given, tmp_path)


def test_a_single_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="needs two or more"):
        resolve_labels(Task.TEXT_CLASSIFICATION, ["POSITIVE"], None, tmp_path)
