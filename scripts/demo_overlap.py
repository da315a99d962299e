"""Checks that the demo's hand-written sources share no text with the public evaluation sets.

    python scripts/demo_overlap.py [--ngram 6] [--jaccard 0.6]

The demo models are scored on SST-2 dev (sentiment) and WNUT-17 test (NER), which they must never
have seen. Hand-written text can still echo an evaluation sentence by chance, so every source line
of models/demo/sources/ is compared, lower-cased and tokenised the same way, with every sentence of
`../shared/data/sst2/{dev,test}.tsv` and `../shared/data/wnut17/emerging.{dev,test}*`:

- a shared run of `--ngram` tokens or more (short stock phrases such as "one of the best" are
  shorter than that), or
- a Jaccard similarity of the token sets of `--jaccard` or more (a paraphrase reordering words).

Exits 1 and lists the lines when any is found; 0 otherwise; 2 when the data is absent.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertserve.evaluation.datasets import read_conll_texts, read_text_column

ROOT = Path(__file__).resolve().parent.parent

SOURCES = ROOT / "models" / "demo" / "sources"
DATA = ROOT.parent / "shared" / "data"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SLOT = re.compile(r"\{[A-Z]+\d?\}")


def words(text: str) -> list[str]:
    return _WORD.findall(_SLOT.sub(" ", text.lower()).replace("n't", " not").replace(" 's", "'s"))


def ngrams(tokens: list[str], n: int) -> Iterator[tuple[str, ...]]:
    return (tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def evaluation_sentences(data: Path) -> Iterator[tuple[str, str]]:
    """(where, sentence) for every evaluation sentence present."""
    for name in ("dev.tsv", "test.tsv"):
        path = data / "sst2" / name
        if path.is_file():
            yield from ((f"sst2/{name}", sentence) for sentence in read_text_column(path, "sentence"))
    for name in ("emerging.dev.conll", "emerging.test.annotated"):
        path = data / "wnut17" / name
        if path.is_file():
            yield from ((f"wnut17/{name}", sentence) for sentence in read_conll_texts(path))


def source_lines(sources: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(sources.iterdir()):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip() and not line.startswith("#"):
                yield f"{path.name}:{number}", line.split("\t")[-1]


def find_overlaps(
    sources: Iterable[tuple[str, str]], evaluation: Iterable[tuple[str, str]], n: int, jaccard: float
) -> list[str]:
    index: dict[tuple[str, ...], tuple[str, str]] = {}
    sets: list[tuple[str, str, frozenset[str]]] = []
    for where, sentence in evaluation:
        tokens = words(sentence)
        for gram in ngrams(tokens, n):
            index.setdefault(gram, (where, sentence))
        if len(tokens) >= 4:
            sets.append((where, sentence, frozenset(tokens)))
    found = []
    for where, line in sources:
        tokens = words(line)
        hit = next((index[g] for g in ngrams(tokens, n) if g in index), None)
        if hit is not None:
            found.append(f"{where}: {line!r}\n    shares {n} words with {hit[0]}: {hit[1]!r}")
            continue
        mine = frozenset(tokens)
        if len(mine) < 4:
            continue
        for other_where, sentence, theirs in sets:
            if len(mine & theirs) / len(mine | theirs) >= jaccard:
                found.append(f"{where}: {line!r}\n    resembles {other_where}: {sentence!r}")
                break
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ngram", type=int, default=6)
    ap.add_argument("--jaccard", type=float, default=0.6)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args(argv)
    evaluation = list(evaluation_sentences(args.data))
    if not evaluation:
        print(f"no evaluation data under {args.data}", file=sys.stderr)
        return 2
    lines = list(source_lines(SOURCES))
    found = find_overlaps(lines, evaluation, args.ngram, args.jaccard)
    for item in found:
        print(item)
    print(
        f"{len(lines)} source lines against {len(evaluation)} evaluation sentences: "
        f"{len(found)} overlapping (shared {args.ngram}-gram or Jaccard >= {args.jaccard})"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
