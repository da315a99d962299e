"""The one place data files are read: CoNLL for taggers, labelled TSV/CSV for classifiers.

Training (`bertserve finetune`), the export gates, `make demo-eval`, the load tests and the scripts
all read their files here, so a file means the same thing to every one of them.

CoNLL (`read_conll`): one ``word ... tag`` per line, the word in the first column and the tag in
the last. Columns are split on tabs when the line has one (a word may then hold spaces), else on
any whitespace (``John B-PER`` as in the CoNLL-2003 files). A line that is blank after stripping
ends a sentence (WNUT-17 separates some sentences by a line holding only a tab); ``-DOCSTART-``
lines are document markers, not words, and end a sentence too.

Labelled texts (`read_labelled_texts`): CSV when the file name ends in ``.csv`` (quoted cells,
commas inside quotes), else TSV read without quote handling (review text is full of unbalanced
quotes). An optional header row names a text column (``text`` or ``sentence``), a ``label``
column and optionally a ``pair`` column, in any order; other columns are ignored. Without a
header a row is ``text<SEP>label``, or ``text<SEP>pair<SEP>label`` where pairs are allowed.
Labels are kept as written; `gold_labels` reads them against a model's labels (a name, a class
id such as SST-2's ``0``/``1``, or ``a,b`` for a multi-label set).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DatasetError",
    "LabelledText",
    "TaggedSentence",
    "gold_labels",
    "read_conll",
    "read_conll_texts",
    "read_labelled_texts",
    "read_text_column",
    "read_texts",
    "resolve_gold",
]

DOCSTART = "-DOCSTART-"
TEXT_COLUMNS = ("text", "sentence")
LABEL_COLUMN = "label"
PAIR_COLUMN = "pair"


class DatasetError(ValueError):
    """A data file that cannot be read as what it claims to be; the message names file and line."""


@dataclass(frozen=True)
class TaggedSentence:
    """One CoNLL sentence: its words and one tag per word."""

    words: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def text(self) -> str:
        """The sentence as a service client would send it: the words joined by single spaces."""
        return " ".join(self.words)

    def word_offsets(self) -> list[tuple[int, int]]:
        """``(start, end)`` of each word in `text`, in characters."""
        offsets, start = [], 0
        for word in self.words:
            offsets.append((start, start + len(word)))
            start += len(word) + 1
        return offsets


@dataclass(frozen=True)
class LabelledText:
    """One classification example; `label` as written in the file, `line` its line number."""

    text: str
    label: str
    pair: str | None = None
    line: int = 0


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"data file {path} does not exist")
    return path


# ---------------------------------------------------------------------------------------------- CoNLL


def _conll_columns(line: str) -> list[str]:
    cells = line.split("\t") if "\t" in line.strip() else line.split()
    return [cell.strip() for cell in cells]


def read_conll(path: Path, *, tags: bool = True) -> list[TaggedSentence]:
    """The sentences of a CoNLL file (see the module docstring for the format). `tags` False
    reads the words only: a line may then hold a word alone (its tag is "")."""
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    found: list[str] = []
    for lineno, line in enumerate(_existing(path).read_text(encoding="utf-8").splitlines(), start=1):
        cols = _conll_columns(line) if line.strip() else []
        if not cols or cols[0] == DOCSTART:
            if words:
                sentences.append(TaggedSentence(tuple(words), tuple(found)))
                words, found = [], []
            continue
        if tags and (len(cols) < 2 or not cols[0] or not cols[-1]):
            raise DatasetError(
                f"{path}:{lineno}: expected 'token<TAB>tag' (a word and its tag), got {line.strip()!r}"
            )
        words.append(cols[0])
        found.append(cols[-1] if len(cols) > 1 else "")
    if words:
        sentences.append(TaggedSentence(tuple(words), tuple(found)))
    if not sentences:
        raise DatasetError(f"{path} has no sentences")
    return sentences


def read_conll_texts(path: Path) -> list[str]:
    """The sentences of a CoNLL file as texts (words joined by single spaces), tags optional."""
    return [sentence.text for sentence in read_conll(path, tags=False)]


# ------------------------------------------------------------------------------------ labelled texts


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    with _existing(path).open(encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".csv":
            reader = csv.reader(fh, delimiter=",")
        else:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [(reader.line_num, row) for row in reader]
    return [(n, row) for n, row in rows if any(cell.strip() for cell in row)]


def _header(row: Sequence[str]) -> dict[str, int] | None:
    """Column positions when `row` is a header naming a text and a label column."""
    names = [cell.strip().lower() for cell in row]
    text = next((name for name in TEXT_COLUMNS if name in names), None)
    if text is None or LABEL_COLUMN not in names:
        return None
    columns = {"text": names.index(text), "label": names.index(LABEL_COLUMN)}
    if PAIR_COLUMN in names:
        columns["pair"] = names.index(PAIR_COLUMN)
    return columns


_TEXT_LABEL = {"text": 0, "label": 1}
_TEXT_PAIR_LABEL = {"text": 0, "pair": 1, "label": 2}


def read_labelled_texts(path: Path, *, pairs: bool = False) -> list[LabelledText]:
    """The examples of a labelled TSV/CSV file (see the module docstring). With `pairs`, a row of
    three cells under no header (or under a ``text``, ``label`` header) is ``text, pair, label``
    (the export's eval files mix single texts and pairs)."""
    rows = _rows(path)
    if not rows:
        raise DatasetError(f"{path} has no examples")
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    columns = _header(rows[0][1])
    if columns is not None:
        rows = rows[1:]
        if not rows:
            raise DatasetError(f"{path} has a header but no examples")
    elif len(rows[0][1]) == 2 or (pairs and len(rows[0][1]) == 3):
        columns = _TEXT_LABEL
    else:
        expected = "two columns" + (" (or three: text, pair, label)" if pairs else "")
        raise DatasetError(
            f"{path}:{rows[0][0]}: expected {expected} text{delimiter!r}label, or a header row "
            f"naming 'text' and 'label' columns; got {len(rows[0][1])} columns"
        )
    by_width = pairs and columns == _TEXT_LABEL
    examples: list[LabelledText] = []
    for lineno, row in rows:
        cols = columns
        if by_width:
            if len(row) not in (2, 3):
                raise DatasetError(f"{path}:{lineno}: expected text{delimiter!r}label or three columns")
            cols = _TEXT_LABEL if len(row) == 2 else _TEXT_PAIR_LABEL
        needed = max(cols.values()) + 1
        if len(row) < needed:
            raise DatasetError(f"{path}:{lineno}: expected at least {needed} columns")
        text, label = row[cols["text"]].strip(), row[cols["label"]].strip()
        if not text or not label:
            raise DatasetError(f"{path}:{lineno}: empty text or label")
        pair = row[cols["pair"]].strip() if "pair" in cols else None
        examples.append(LabelledText(text, label, pair, lineno))
    return examples


def resolve_gold(raw: str, labels: Sequence[str]) -> frozenset[str] | None:
    """The label set `raw` names among `labels`: a label name, a class id, or ``a,b`` (multi-label);
    None when any part is not a label."""
    raw = raw.strip()
    parts = [raw] if raw in labels else [p.strip() for p in raw.split(",") if p.strip()]
    found: set[str] = set()
    for part in parts:
        if part in labels:
            found.add(part)
        elif part.lstrip("-").isdigit() and 0 <= int(part) < len(labels):
            found.add(labels[int(part)])
        else:
            return None
    return frozenset(found) if found else None


def gold_labels(path: Path, examples: Sequence[LabelledText], labels: Sequence[str]) -> list[frozenset[str]]:
    """Each example's gold label set among `labels`; an unknown label is an error naming its line."""
    gold = []
    for example in examples:
        resolved = resolve_gold(example.label, labels)
        if resolved is None:
            raise DatasetError(
                f"{path}:{example.line}: unknown label {example.label!r}; labels are {list(labels)}"
            )
        gold.append(resolved)
    return gold


# -------------------------------------------------------------------------------------- texts only


def read_text_column(path: Path, column: str) -> list[str]:
    """The named column of a TSV with a header row (SST-2's dev has `sentence`, test `index sentence`)."""
    rows = _rows(path)
    if not rows:
        return []
    header = rows[0][1]
    if column not in header:
        raise DatasetError(f"{path} has no {column!r} column (header: {header})")
    index = header.index(column)
    return [row[index].strip() for _, row in rows[1:] if len(row) > index and row[index].strip()]


def read_lines(path: Path) -> list[str]:
    """One text a line; blank lines and `#` comments skipped."""
    lines = _existing(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def read_texts(path: Path) -> list[str]:
    """Request texts from any data file: CoNLL (`.conll`: sentences), TSV (`.tsv`: the `sentence`
    column), otherwise one text a line."""
    if path.suffix == ".conll":
        return read_conll_texts(path)
    if path.suffix == ".tsv":
        return read_text_column(path, "sentence")
    return read_lines(path)
