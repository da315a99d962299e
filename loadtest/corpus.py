"""Real-looking request texts for load tests and benchmarks.

Public corpora are read from `../shared/data` when present (SST-2 sentences for classification,
WNUT-17 sentences for NER: real lengths and real vocabulary, which is what batching and padding
figures depend on); otherwise the project-written sentences in `loadtest/corpus/` are used, so every
script and test works on a fresh clone without them. Nothing here is copied into the repository.
Files are read by `bertserve.evaluation.datasets`, as the export gates and the evaluation read them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bertserve.evaluation.datasets import read_conll_texts, read_lines, read_text_column, read_texts

# The names this module has always offered; the readers are bertserve.evaluation.datasets'.
read_sentence_list = read_lines
read_tsv_column = read_text_column
read_conll_sentences = read_conll_texts

ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
DATA_ENV = "BERTSERVE_LOADTEST_DATA"


def data_dir() -> Path:
    """`$BERTSERVE_LOADTEST_DATA`, else `../shared/data` beside the project."""
    configured = os.environ.get(DATA_ENV)
    return Path(configured) if configured else ROOT.parent / "shared" / "data"


@dataclass(frozen=True, slots=True)
class Corpus:
    texts: tuple[str, ...]
    source: str


def _limited(texts: list[str], limit: int | None) -> tuple[str, ...]:
    return tuple(texts[:limit] if limit else texts)


def classify_corpus(limit: int | None = None, data: Path | None = None) -> Corpus:
    """SST-2 dev sentences (872, real lengths) or the built-in review sentences."""
    path = (data or data_dir()) / "sst2" / "dev.tsv"
    if path.is_file():
        return Corpus(_limited(read_text_column(path, "sentence"), limit), str(path))
    builtin = CORPUS_DIR / "classify.txt"
    return Corpus(_limited(read_lines(builtin), limit), f"built-in ({builtin.name})")


def ner_corpus(limit: int | None = None, data: Path | None = None) -> Corpus:
    """WNUT-17 dev sentences (tweets, emerging entities) or the built-in entity sentences."""
    path = (data or data_dir()) / "wnut17" / "emerging.dev.conll"
    if path.is_file():
        return Corpus(_limited(read_conll_texts(path), limit), str(path))
    builtin = CORPUS_DIR / "ner.txt"
    return Corpus(_limited(read_lines(builtin), limit), f"built-in ({builtin.name})")


def sentence_file_corpus(path: Path, limit: int | None = None) -> Corpus:
    """A user-supplied file: TSV with a `sentence` header, CoNLL (`.conll`), or one text a line."""
    return Corpus(_limited(read_texts(path), limit), str(path))
