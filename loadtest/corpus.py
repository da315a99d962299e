"""Real-looking request texts for load tests and benchmarks.

Public corpora are read from `../shared/data` when present (SST-2 sentences for classification,
WNUT-17 sentences for NER: real lengths and real vocabulary, which is what batching and padding
figures depend on); otherwise the project-written sentences in `loadtest/corpus/` are used, so every
script and test works on a fresh clone without them. Nothing here is copied into the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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


def read_sentence_list(path: Path) -> list[str]:
    """One text a line; blank lines and `#` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def read_tsv_column(path: Path, column: str) -> list[str]:
    """The named column of a TSV with a header row (SST-2's dev has `sentence`, test `index sentence`)."""
    rows = path.read_text(encoding="utf-8").splitlines()
    if not rows:
        return []
    header = rows[0].split("\t")
    if column not in header:
        raise ValueError(f"{path} has no {column!r} column (header: {header})")
    index = header.index(column)
    texts = []
    for row in rows[1:]:
        cells = row.split("\t")
        if len(cells) > index and cells[index].strip():
            texts.append(cells[index].strip())
    return texts


def read_conll_sentences(path: Path) -> list[str]:
    """Sentences of a `token<TAB>tag` CoNLL file, tokens joined by spaces.

    NOTE: WNUT-17's training file separates some sentences by a line holding only a tab, so a
    sentence ends at any line that is blank after stripping.
    """
    sentences: list[str] = []
    tokens: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if tokens:
                sentences.append(" ".join(tokens))
                tokens = []
            continue
        tokens.append(line.split("\t")[0].strip())
    if tokens:
        sentences.append(" ".join(tokens))
    return sentences


def _limited(texts: list[str], limit: int | None) -> tuple[str, ...]:
    return tuple(texts[:limit] if limit else texts)


def classify_corpus(limit: int | None = None, data: Path | None = None) -> Corpus:
    """SST-2 dev sentences (872, real lengths) or the built-in review sentences."""
    path = (data or data_dir()) / "sst2" / "dev.tsv"
    if path.is_file():
        return Corpus(_limited(read_tsv_column(path, "sentence"), limit), str(path))
    builtin = CORPUS_DIR / "classify.txt"
    return Corpus(_limited(read_sentence_list(builtin), limit), f"built-in ({builtin.name})")


def ner_corpus(limit: int | None = None, data: Path | None = None) -> Corpus:
    """WNUT-17 dev sentences (tweets, emerging entities) or the built-in entity sentences."""
    path = (data or data_dir()) / "wnut17" / "emerging.dev.conll"
    if path.is_file():
        return Corpus(_limited(read_conll_sentences(path), limit), str(path))
    builtin = CORPUS_DIR / "ner.txt"
    return Corpus(_limited(read_sentence_list(builtin), limit), f"built-in ({builtin.name})")


def sentence_file_corpus(path: Path, limit: int | None = None) -> Corpus:
    """A user-supplied file: TSV with a `sentence` header, CoNLL (`.conll`), or one text a line."""
    if path.suffix == ".conll":
        texts = read_conll_sentences(path)
    elif path.suffix == ".tsv":
        texts = read_tsv_column(path, "sentence")
    else:
        texts = read_sentence_list(path)
    return Corpus(_limited(texts, limit), str(path))
