"""The one reader of each data format: every variant the earlier readers accepted, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertserve.evaluation.datasets import (
    DatasetError,
    LabelledText,
    TaggedSentence,
    gold_labels,
    read_conll,
    read_conll_texts,
    read_labelled_texts,
    read_text_column,
    read_texts,
    resolve_gold,
)

DATA = Path(__file__).resolve().parents[3] / "models" / "demo" / "data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- CoNLL


def test_conll_tab_or_whitespace_columns_and_docstart(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.conll",
        "-DOCSTART- -X- O O\n\nJohn NNP B-NP B-PER\nSmith\tB-x\tI-PER\n\t\nNew York\tB-LOC\n",
    )
    assert read_conll(path) == [
        TaggedSentence(("John", "Smith"), ("B-PER", "I-PER")),
        TaggedSentence(("New York",), ("B-LOC",)),  # with tabs, a word may hold a space
    ]


def test_a_tab_only_line_ends_a_sentence(tmp_path: Path) -> None:
    path = write(tmp_path, "x.conll", "Paris\tB-location\nis\tO\n\t\nnice\tO\n\nok\tO\n")
    assert read_conll_texts(path) == ["Paris is", "nice", "ok"]


def test_conll_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.conll", "Angela\tB-PER\n\nMerkel\n")
    with pytest.raises(DatasetError, match=r"d.conll:3: expected 'token<TAB>tag'"):
        read_conll(path)
    assert read_conll_texts(path) == ["Angela", "Merkel"]  # texts only: tags are optional
    with pytest.raises(DatasetError, match="has no sentences"):
        read_conll(write(tmp_path, "e.conll", "\n-DOCSTART- O\n"))
    with pytest.raises(DatasetError, match="does not exist"):
        read_conll(tmp_path / "missing.conll")


def test_word_offsets_place_words_on_the_joined_text() -> None:
    sentence = TaggedSentence(("Zürich", "ist", "schön"), ("B-LOC", "O", "O"))
    assert sentence.text == "Zürich ist schön"
    assert [sentence.text[a:b] for a, b in sentence.word_offsets()] == list(sentence.words)


@pytest.mark.parametrize("name", ["ner/train.conll", "ner/heldout.conll"])
def test_demo_conll_files(name: str) -> None:
    sentences = read_conll(DATA / name)
    assert len(sentences) > 100 and all(len(s.words) == len(s.tags) for s in sentences)


# ------------------------------------------------------------------------------------ labelled texts


def test_headerless_tsv_keeps_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", 'great "film\tPOSITIVE\n\nawful\tNEGATIVE\n')
    assert [(e.text, e.label, e.line) for e in read_labelled_texts(path)] == [
        ('great "film', "POSITIVE", 1),
        ("awful", "NEGATIVE", 3),
    ]


def test_csv_header_any_order_and_sst2_header(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'id,label,sentence\n1,pos,"loved it, truly"\n')
    assert read_labelled_texts(path) == [LabelledText("loved it, truly", "pos", None, 2)]
    sst2 = write(tmp_path, "dev.tsv", "sentence\tlabel\nit 's a charming journey . \t1\n")
    assert read_labelled_texts(sst2) == [LabelledText("it 's a charming journey .", "1", None, 2)]


def test_pairs_where_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "p.tsv", "text\tlabel\none\tPOSITIVE\na cat\ta dog\tsports,travel\n")
    assert [(e.text, e.pair, e.label) for e in read_labelled_texts(path, pairs=True)] == [
        ("one", None, "POSITIVE"),
        ("a cat", "a dog", "sports,travel"),
    ]
    named = write(tmp_path, "n.tsv", "label\tpair\ttext\nyes\tb\ta\n")
    assert read_labelled_texts(named) == [LabelledText("a", "yes", "b", 2)]
    with pytest.raises(DatasetError, match=r"d.tsv:1: expected two columns"):
        read_labelled_texts(write(tmp_path, "d.tsv", "a\tb\tc\n"))


def test_labelled_text_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"d.tsv:3: empty text or label"):
        read_labelled_texts(write(tmp_path, "d.tsv", "text\tlabel\nfine\tPOSITIVE\nno label\t \n"))
    with pytest.raises(DatasetError, match="has a header but no examples"):
        read_labelled_texts(write(tmp_path, "h.tsv", "text\tlabel\n"))
    with pytest.raises(DatasetError, match="has no examples"):
        read_labelled_texts(write(tmp_path, "e.tsv", "\n\n"))


def test_gold_labels_by_name_id_or_set(tmp_path: Path) -> None:
    labels = ("NEGATIVE", "POSITIVE")
    assert resolve_gold("POSITIVE", labels) == frozenset({"POSITIVE"})
    assert resolve_gold("0", labels) == frozenset({"NEGATIVE"})
    assert resolve_gold("0,POSITIVE", labels) == frozenset(labels)
    assert resolve_gold("2", labels) is None and resolve_gold("maybe", labels) is None
    examples = [LabelledText("a", "1", line=1), LabelledText("b", "maybe", line=2)]
    with pytest.raises(DatasetError, match=r"d.tsv:2: unknown label 'maybe'"):
        gold_labels(tmp_path / "d.tsv", examples, labels)


def test_demo_tsv_files() -> None:
    examples = read_labelled_texts(DATA / "sentiment" / "heldout.tsv")
    assert len(examples) > 100 and {e.label for e in examples} == {"NEGATIVE", "POSITIVE"}


# -------------------------------------------------------------------------------------- texts only


def test_texts_from_any_file(tmp_path: Path) -> None:
    tsv = write(tmp_path, "test.tsv", "index\tsentence\n0\tuneasy mishmash .\n1\t \n")
    assert read_text_column(tsv, "sentence") == ["uneasy mishmash ."]
    assert read_texts(tsv) == ["uneasy mishmash ."]
    with pytest.raises(DatasetError, match="no 'text' column"):
        read_text_column(tsv, "text")
    assert read_texts(write(tmp_path, "s.conll", "a\tO\nb\tO\n")) == ["a b"]
    assert read_texts(write(tmp_path, "s.txt", "# comment\none\n\n two \n")) == ["one", "two"]
