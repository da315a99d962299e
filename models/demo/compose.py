"""Compose the demo's training and held-out data from the hand-written sources in `sources/`.

    python models/demo/compose.py            # rewrites data/ from sources/ (deterministic)
    python models/demo/compose.py --check    # exit 1 if data/ is not what sources/ produce

Everything under `sources/` was written for this project; no external data set is read. The
composer multiplies the hand-written material with a few rules that keep the text natural:

- sentiment: the hand-written sentences and snippets as they are, plus a lower-cased, tokenised
  variant of some (the style of critics' snippets in public benchmarks); clauses joined by
  contrast ("A, but B" -> B), concession ("although A, B" -> B), agreement ("A and A'"), hedges,
  ironic openers ("Oh great, B" -> B negative) and verdicts; short adjective snippets
  ("a witty , tender comedy", "ambitious but muddled", "not particularly funny", "never dull").
- NER: templates filled from word lists of people, places, organisations and MISC items, in
  IOB2, with lower-cased and unpunctuated variants, leading "the" kept outside entities.

The held-out split is decided per source item by a hash of its text (templates, sentences,
clauses, adjectives and every entity name), and composition draws only from items of the same
split, so no held-out sentence shares a template, clause or entity name with training.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "sources"
DATA = HERE / "data"
SEED = 5
HELDOUT_PERCENT = 15
SENTIMENT_LABELS = ("NEGATIVE", "POSITIVE")
NER_TYPES = ("PER", "ORG", "LOC", "MISC")


# ------------------------------------------------------------------------------------------ helpers


def in_heldout(item: str, percent: int = HELDOUT_PERCENT) -> bool:
    """A stable split decision per item: independent of file order and of the other items."""
    digest = hashlib.sha256(item.strip().lower().encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent


def read_lines(path: Path) -> list[str]:
    """Non-empty lines that are not comments."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_labelled(path: Path, columns: int) -> list[tuple[str, ...]]:
    rows = []
    for line in read_lines(path):
        cols = tuple(c.strip() for c in line.split("\t"))
        if len(cols) != columns:
            raise ValueError(f"{path}: expected {columns} tab-separated columns in {line!r}")
        rows.append(cols)
    return rows


def read_sections(path: Path) -> dict[str, list[str]]:
    """A word list split into `[section]` blocks."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in read_lines(path):
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif current is None:
            raise ValueError(f"{path}: {line!r} comes before any [section]")
        else:
            current.append(line)
    return sections


_TOKEN = re.compile(r"'s\b|(?:Dr|Mr|Ms|Mrs)\.|\$?\d+(?:[.,]\d+)*|\w+(?:['\u2019&.-]\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Words and punctuation, keeping names like "McDonald's", "H&M" and "Coca-Cola" whole."""
    return _TOKEN.findall(text)


def sst_style(text: str) -> str:
    """Lower-cased, punctuation split off and clitics detached, as critics' snippet corpora are."""
    text = text.lower()
    text = re.sub(r"n't\b", " n't", text)
    text = re.sub(r"'(s|re|ve|ll|d|m)\b", r" '\1", text)
    text = re.sub(r"([,.!?;:\"()])", r" \1 ", text)
    return re.sub(r"\s+", " ", text).strip()


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def split_items(items: Sequence[str], heldout: bool) -> list[str]:
    return [item for item in items if in_heldout(item) == heldout]


# ---------------------------------------------------------------------------------------- sentiment


@dataclass(frozen=True)
class SentimentSources:
    sentences: list[tuple[str, str]]  # (label, text)
    phrases: list[tuple[str, str]]
    clauses: list[tuple[str, str, str]]  # (domain, label, clause)
    adjectives: dict[str, list[str]]  # label -> words
    neutral: list[tuple[str, str]]  # (domain, clause)
    words: dict[tuple[str, str], list[str]]  # (label, "noun" | "verb") -> words


def load_sentiment_sources(root: Path = SOURCES) -> SentimentSources:
    sentences = [(label, text) for label, text in read_labelled(root / "sentiment_sentences.tsv", 2)]
    phrases = [(label, text) for label, text in read_labelled(root / "sentiment_phrases.tsv", 2)]
    clauses = [(d, label, c) for d, label, c in read_labelled(root / "sentiment_clauses.tsv", 3)]
    adjectives: dict[str, list[str]] = {label: [] for label in SENTIMENT_LABELS}
    for label, word in read_labelled(root / "sentiment_lexicon.tsv", 2):
        if word not in adjectives[label]:
            adjectives[label].append(word)
    neutral = [(domain, clause) for domain, clause in read_labelled(root / "sentiment_neutral.tsv", 2)]
    for label, *_ in [*sentences, *phrases]:
        if label not in SENTIMENT_LABELS:
            raise ValueError(f"unknown sentiment label {label!r}")
    words: dict[tuple[str, str], list[str]] = {}
    for label, kind, word in read_labelled(root / "sentiment_words.tsv", 3):
        words.setdefault((label, kind), []).append(word)
    return SentimentSources(sentences, phrases, clauses, adjectives, neutral, words)


# Rules joining two clauses of opposite polarity; the label is the second clause's (`b`).
CONTRAST = (
    "{a}, but {b}.",
    "{a} but {b}",
    "{A}, but honestly {b}.",
    "Although {a}, {b}.",
    "While {a}, {b}.",
    "{B}, even though {a}.",
    "{B}, even if {a}.",
    "{A}. Still, {b}.",
    "{A}. That said, {b}.",
    "{A}. Unfortunately, {b}.",
    "{A}... shame {b}.",
    "Sure, {a}, but {b}.",
    "Yes, {a}. But {b}.",
    "{A}, however {b}.",
    "{A}. The problem is that {b}.",
    "I'll admit {a}, but {b}.",
    "{A}; sadly {b}.",
)
# Contrast rules that read naturally only when the second clause is positive (or negative).
CONTRAST_TO_POSITIVE = (
    "{A}, but luckily {b}.",
    "{A}. Thankfully {b}.",
    "{A} - but {b}, which makes up for it.",
)
CONTRAST_TO_NEGATIVE = ("{A}, but sadly {b}.", "{A}. Too bad {b}.", "{A}, it's just a pity {b}.")
# Two clauses of the same polarity.
AGREE = (
    "{A}, and {b}.",
    "{A} and {b}.",
    "{a} and {b}",
    "{A}. Also, {b}.",
    "Not only {is_a}, {b} too.",
    "{A}, plus {b}.",
)
SINGLE = ("{A}.", "{a}", "Honestly, {a}.", "To be fair, {a}.", "I have to say {a}.", "{A}!", "{A}, no doubt.")
VERDICT = {
    "POSITIVE": (
        "{A}. Highly recommended.",
        "{A}. Loved it.",
        "{A}, I'd go back in a heartbeat.",
        "{A}. Five stars.",
        "{A}, so I'm very happy.",
        "{A}. Can't wait for more.",
    ),
    "NEGATIVE": (
        "{A}. Not recommended.",
        "{A}. Avoid.",
        "{A}, so I'm asking for a refund.",
        "{A}. One star.",
        "{A}, what a shame.",
        "{A}. Never again.",
    ),
}
# A neutral description ({n}) around a verdict clause: the label is the verdict's.
FRAMED = (
    "{N}, and {b}.",
    "{N}; {b}.",
    "{N}. {B}.",
    "{B}, and that matters because {n}.",
    "{N}, but {b}.",
    "{N}, which is a shame because {b}.",
    "{N}. Sadly, {b}.",
    "{N}. Happily, {b}.",
    "{N} - and {b}.",
    "{B}. For the record, {n}.",
)
IRONY = (
    "Oh great, {b}.",
    "Wonderful, {b}. Just what I needed.",
    "Fantastic. {B}.",
    "Brilliant, {b}. Thanks a lot.",
    "Love how {b}.",
    "Well done, {b}.",
)
NOUNS = (
    "film",
    "movie",
    "comedy",
    "drama",
    "thriller",
    "story",
    "performance",
    "script",
    "debut",
    "documentary",
    "romance",
    "sequel",
    "novel",
    "album",
    "show",
    "experience",
    "effort",
    "ride",
    "production",
    "picture",
)
ADVERBS = (
    "very",
    "really",
    "genuinely",
    "consistently",
    "thoroughly",
    "quite",
    "utterly",
    "often",
    "remarkably",
)
NEGATED_POSITIVE = (
    "not {p}",
    "not particularly {p}",
    "not very {p}",
    "far from {p}",
    "hardly {p}",
    "never quite {p}",
    "not nearly as {p} as it thinks",
    "it is not {p}",
    "nothing {p} about it",
    "not {p} enough",
)
# Negated negative words that read as praise; only these words, others stay ambiguous ("not cheap").
NEVER_NEGATIVE = (
    "boring",
    "dull",
    "tedious",
    "predictable",
    "tiresome",
    "plodding",
    "sluggish",
    "monotonous",
    "bland",
    "stale",
    "forgettable",
    "preachy",
)
NEGATED_NEGATIVE = (
    "never {n}",
    "not {n} at all",
    "never once {n}",
    "anything but {n}",
    "not for a moment {n}",
)


def _inverted(clause: str) -> str | None:
    """ "the cast is great" -> "is the cast great" (for "Not only is the cast great, ..."), else None."""
    match = re.match(r"^(the [\w' -]+?) (is|are|was|were) (.+)$", clause)
    return f"{match.group(2)} {match.group(1)} {match.group(3)}" if match else None


def _fill(rule: str, a: str, b: str = "", n: str = "") -> str | None:
    """The rule with its clauses in place; None where the rule does not fit the clause."""
    inverted = _inverted(a)
    if "{is_a}" in rule and inverted is None:
        return None
    return rule.format(a=a, A=capitalize(a), b=b, B=capitalize(b), is_a=inverted, n=n, N=capitalize(n))


def _adjective_snippets(
    adjectives: dict[str, list[str]], rng: random.Random, count: int
) -> list[tuple[str, str]]:
    """Short critic-style snippets from the adjective lexicon, including contrast and negation."""
    pos, neg = adjectives["POSITIVE"], adjectives["NEGATIVE"]
    never = [w for w in neg if w in NEVER_NEGATIVE]

    def same(words: list[str]) -> str:
        a, b, c = rng.choice(words), rng.choice(words), rng.choice(words)
        noun, adverb = rng.choice(NOUNS), rng.choice(ADVERBS)
        return rng.choice(
            (
                f"a {a} {noun}",
                f"{a} and {b}",
                f"{adverb} {a}",
                f"a {a} , {b} {noun}",
                f"{a} , {b} and {c}",
                f"the {noun} is {adverb} {a}",
                f"an {adverb} {a} {noun}",
            )
        )

    def mixed() -> tuple[str, str]:
        p, n, noun, adverb = rng.choice(pos), rng.choice(neg), rng.choice(NOUNS), rng.choice(ADVERBS)
        options = [
            ("NEGATIVE", f"{p} but {n}"),
            ("POSITIVE", f"{n} but {p}"),
            ("NEGATIVE", f"a {p} idea , but a {n} {noun}"),
            ("POSITIVE", f"{n} at times , but {adverb} {p}"),
            ("NEGATIVE", rng.choice(NEGATED_POSITIVE).format(p=p)),
            ("NEGATIVE", rng.choice(NEGATED_POSITIVE).format(p=rng.choice(pos))),
        ]
        if never:
            options.append(("POSITIVE", rng.choice(NEGATED_NEGATIVE).format(n=rng.choice(never))))
            options.append(("POSITIVE", f"{p} and never {rng.choice(never)}"))
        return rng.choice(options)

    out: list[tuple[str, str]] = []
    while len(out) < count:
        roll = rng.random()
        if roll < 0.35:
            label, text = "POSITIVE", same(pos)
        elif roll < 0.7:
            label, text = "NEGATIVE", same(neg)
        else:
            label, text = mixed()
        # "an" before consonants and "a" before vowels are fixed rather than avoided
        text = re.sub(r"\ban ([^aeiou])", r"a \1", text)
        text = re.sub(r"\ba ([aeiou])", r"an \1", text)
        out.append((label, text))
    return out


NOUN_SNIPPETS = (
    "a {w}",
    "an absolute {w}",
    "nothing short of a {w}",
    "the {noun} is a {w}",
    "a real {w} of a {noun}",
    "what a {w}",
    "this {noun} is a {w}",
    "{w} , plain and simple",
)
VERB_SNIPPETS = ("it {w}", "the {noun} {w}", "the cast {w}", "it {adverb} {w}", "the {noun} simply {w}")
VERB_ADVERBS = ("really", "often", "quietly", "ultimately", "consistently", "mostly")


def _word_snippets(
    words: dict[tuple[str, str], list[str]], rng: random.Random, count: int
) -> list[tuple[str, str]]:
    """Snippets around evaluative nouns and verbs ("a triumph", "the film drags")."""
    keys = sorted(k for k, v in words.items() if v)
    out: list[tuple[str, str]] = []
    while keys and len(out) < count:
        label, kind = rng.choice(keys)
        rules = NOUN_SNIPPETS if kind == "noun" else VERB_SNIPPETS
        text = rng.choice(rules).format(
            w=rng.choice(words[(label, kind)]), noun=rng.choice(NOUNS), adverb=rng.choice(VERB_ADVERBS)
        )
        text = re.sub(r"\ba ([aeiou])", r"an \1", text)
        out.append((label, text))
    return out


def compose_sentiment(
    sources: SentimentSources, heldout: bool, rng: random.Random, scale: float
) -> list[tuple[str, str]]:
    """(text, label) rows for one split."""
    rows: list[tuple[str, str]] = []
    for label, text in sources.sentences:
        if in_heldout(text) != heldout:
            continue
        rows.append((text, label))
        if rng.random() < 0.5:
            rows.append((sst_style(text), label))
    for label, text in sources.phrases:
        if in_heldout(text) != heldout:
            continue
        rows.append((text, label))
        if rng.random() < 0.3:
            rows.append(
                (capitalize(text.replace(" ,", ",").replace(" 's", "'s").replace(" n't", "n't")) + ".", label)
            )

    clauses = [(d, lab, c) for d, lab, c in sources.clauses if in_heldout(c) == heldout]
    by_domain: dict[str, dict[str, list[str]]] = {}
    for domain, label, clause in clauses:
        by_domain.setdefault(domain, {"POSITIVE": [], "NEGATIVE": []})[label].append(clause)
    domains = sorted(d for d, groups in by_domain.items() if groups["POSITIVE"] and groups["NEGATIVE"])
    neutral: dict[str, list[str]] = {}
    for domain, clause in sources.neutral:
        if in_heldout(clause) == heldout:
            neutral.setdefault(domain, []).append(clause)
    # films get the largest share: critics' snippets are what public sentiment benchmarks hold
    weights = [4.0 if d == "film" else 1.0 for d in domains]

    def pick(label: str) -> tuple[str, list[str]]:
        domain = rng.choices(domains, weights)[0]
        return domain, by_domain[domain][label]

    n_composed = int(5000 * scale)
    for _ in range(n_composed):
        kind = rng.random()
        second = rng.choice(SENTIMENT_LABELS)
        first = "NEGATIVE" if second == "POSITIVE" else "POSITIVE"
        domain, pool_b = pick(second)
        b = rng.choice(pool_b)
        composed: str | None
        if kind < 0.42:
            a = rng.choice(by_domain[domain][first])
            extra = CONTRAST_TO_POSITIVE if second == "POSITIVE" else CONTRAST_TO_NEGATIVE
            composed = _fill(rng.choice(CONTRAST + extra), a, b)
        elif kind < 0.60:
            a = rng.choice(pool_b)
            if a == b:
                continue
            composed = _fill(rng.choice(AGREE), a, b)
        elif kind < 0.78:
            composed = _fill(rng.choice(SINGLE), b)
        elif kind < 0.86:
            composed = _fill(rng.choice(VERDICT[second]), b)
        elif kind < 0.95:
            rule = rng.choice(FRAMED)
            fits = ("Sadly" not in rule and "a shame" not in rule) or second == "NEGATIVE"
            fits = fits and ("Happily" not in rule or second == "POSITIVE")
            composed = (
                _fill(rule, "", b, rng.choice(neutral.get(domain) or neutral["film"])) if fits else None
            )
        else:
            if second == "POSITIVE":
                continue
            composed = _fill(rng.choice(IRONY), "", b)
        if composed is None:
            continue
        if rng.random() < 0.25:
            composed = sst_style(composed)
        rows.append((composed, second))

    # Longer reviews: two or three of the split's hand-written sentences of one polarity, sometimes
    # after a neutral sentence about the subject; long, multi-sentence text is where a model trained
    # on short snippets fails first.
    by_label: dict[str, list[str]] = {label: [] for label in SENTIMENT_LABELS}
    for label, text in sources.sentences:
        if in_heldout(text) == heldout:
            by_label[label].append(text)
    all_neutral = [clause for clauses in neutral.values() for clause in clauses]
    for _ in range(int(1500 * scale)):
        label = rng.choice(SENTIMENT_LABELS)
        parts = rng.sample(by_label[label], rng.choice((2, 2, 3)))
        if all_neutral and rng.random() < 0.35:
            parts.insert(0, capitalize(rng.choice(all_neutral)) + ".")
        review = " ".join(parts)
        rows.append((sst_style(review) if rng.random() < 0.5 else review, label))

    adjectives = {label: split_items(words, heldout) for label, words in sources.adjectives.items()}
    rows.extend((text, label) for label, text in _adjective_snippets(adjectives, rng, int(1500 * scale)))
    words = {key: split_items(items, heldout) for key, items in sources.words.items()}
    rows.extend((text, label) for label, text in _word_snippets(words, rng, int(600 * scale)))
    return rows


# ---------------------------------------------------------------------------------------------- NER


@dataclass(frozen=True)
class NerSources:
    first_names: list[str]
    last_names: list[str]
    locations: list[str]
    organizations: list[str]
    misc: dict[str, list[str]]  # adjective | event | product
    templates: list[str]
    plain: list[str]  # sentences without any entity: the vocabulary a tagger must learn to leave alone


def load_ner_sources(root: Path = SOURCES) -> NerSources:
    misc = read_sections(root / "ner_misc.txt")
    for section in ("adjective", "event", "product"):
        if not misc.get(section):
            raise ValueError(f"ner_misc.txt needs a non-empty [{section}] section")
    return NerSources(
        first_names=read_lines(root / "ner_first_names.txt"),
        last_names=read_lines(root / "ner_last_names.txt"),
        locations=read_lines(root / "ner_locations.txt"),
        organizations=read_lines(root / "ner_organizations.txt"),
        misc=misc,
        templates=read_lines(root / "ner_templates.txt"),
        plain=read_lines(root / "ner_plain.txt"),
    )


Tagged = list[tuple[str, str]]
_SLOT = re.compile(r"\{([A-Z]+)\d?\}")


def entity_tokens(text: str, kind: str) -> Tagged:
    """IOB2 tokens for one entity; a leading "the" stays outside it, as in CoNLL annotations."""
    tokens = tokenize(text)
    tagged: Tagged = []
    if len(tokens) > 1 and tokens[0].lower() == "the":
        tagged.append((tokens[0], "O"))
        tokens = tokens[1:]
    tagged.extend((tok, ("B-" if i == 0 else "I-") + kind) for i, tok in enumerate(tokens))
    return tagged


class _NerFiller:
    def __init__(self, sources: NerSources, heldout: bool, rng: random.Random) -> None:
        self.rng = rng
        self.first = split_items(sources.first_names, heldout)
        self.last = split_items(sources.last_names, heldout)
        self.pools = {
            "LOC": split_items(sources.locations, heldout),
            "ORG": split_items(sources.organizations, heldout),
            "NAT": split_items(sources.misc["adjective"], heldout),
            "EVENT": split_items(sources.misc["event"], heldout),
            "PRODUCT": split_items(sources.misc["product"], heldout),
        }

    def person(self) -> str:
        roll = self.rng.random()
        if roll < 0.65:
            return f"{self.rng.choice(self.first)} {self.rng.choice(self.last)}"
        if roll < 0.75:
            return f"{self.rng.choice(self.first)} {self.rng.choice(self.first)} {self.rng.choice(self.last)}"
        if roll < 0.87:
            return self.rng.choice(self.last)
        return self.rng.choice(self.first)

    def fill(self, slot: str) -> Tagged:
        if slot == "PER":
            return entity_tokens(self.person(), "PER")
        if slot == "FIRST":
            return entity_tokens(self.rng.choice(self.first), "PER")
        if slot == "LAST":
            return entity_tokens(self.rng.choice(self.last), "PER")
        value = self.rng.choice(self.pools[slot])
        kind = {"LOC": "LOC", "ORG": "ORG"}.get(slot, "MISC")
        if slot in ("EVENT", "PRODUCT") and value.lower().startswith("the "):
            # the template supplies its own article ("the {EVENT}") for some slots; avoid "the the"
            value = value[4:]
        return entity_tokens(value, kind)


def fill_template(template: str, filler: _NerFiller) -> Tagged:
    tagged: Tagged = []
    position = 0
    for match in _SLOT.finditer(template):
        tagged.extend((tok, "O") for tok in tokenize(template[position : match.start()]))
        tagged.extend(filler.fill(match.group(1)))
        position = match.end()
    tagged.extend((tok, "O") for tok in tokenize(template[position:]))
    # "the the": a template's article before an entity that brings its own
    cleaned: Tagged = []
    for tok, tag in tagged:
        if cleaned and tok.lower() == "the" and cleaned[-1][0].lower() == "the":
            continue
        cleaned.append((tok, tag))
    if cleaned and cleaned[0][0] == "the":
        cleaned[0] = ("The", cleaned[0][1])
    return cleaned


def _noisy(tagged: Tagged, rng: random.Random) -> Tagged:
    roll = rng.random()
    if roll < 0.2:  # chat style: all lower case
        tagged = [(tok.lower(), tag) for tok, tag in tagged]
    elif roll < 0.24:  # shouting
        tagged = [(tok.upper(), tag) for tok, tag in tagged]
    if rng.random() < 0.15 and tagged and tagged[-1][0] in ".!?" and len(tagged) > 1:
        tagged = tagged[:-1]
    return tagged


def plain_sentences(sources: NerSources, heldout: bool) -> list[Tagged]:
    """Entity-free sentences (the plain list and the slot-free templates), every token O."""
    texts = split_items(sources.plain, heldout) + [
        t for t in split_items(sources.templates, heldout) if not _SLOT.search(t)
    ]
    return [[(tok, "O") for tok in tokenize(text)] for text in texts]


def compose_ner(
    sources: NerSources, heldout: bool, rng: random.Random, count: int, plain_share: float = 0.15
) -> list[Tagged]:
    """`count` sentences: templates filled with names, and `plain_share` of entity-free ones."""
    filler = _NerFiller(sources, heldout, rng)
    with_slots = [t for t in split_items(sources.templates, heldout) if _SLOT.search(t)]
    plain = plain_sentences(sources, heldout)
    sentences: list[Tagged] = []
    for _ in range(count):
        if plain and rng.random() < plain_share:
            sentences.append(_noisy(list(rng.choice(plain)), rng))
        else:
            sentences.append(_noisy(fill_template(rng.choice(with_slots), filler), rng))
    return sentences


def _cropped(sentence: Tagged, rng: random.Random) -> Tagged:
    """The sentence without its first few tokens, as a window cut through a document starts."""
    if len(sentence) < 4:
        return sentence
    rest = sentence[rng.randrange(1, len(sentence) - 2) :]
    tok, tag = rest[0]
    if tag.startswith("I-"):  # an entity cut in two: its visible part starts it
        rest = [(tok, "B-" + tag[2:]), *rest[1:]]
    return rest


def with_passages(
    sentences: list[Tagged],
    plain: Sequence[Tagged],
    rng: random.Random,
    share: float = 0.6,
    max_words: int = 100,
) -> list[Tagged]:
    """The sentences, plus passages of 2-6 sentences (`share` of them go into passages too).

    A tagger trained on isolated sentences only learns that a sentence starts right after [CLS];
    inside a document, or a window cut through one, its neighbours then change its answers (joining
    just two WNUT-17 sentences moved a quarter of the entities). Passages teach it to read each
    sentence the same wherever it stands: they mix entity sentences with entity-free ones, and a
    third of them start mid-sentence, as the service's windows over a long text do. The single
    sentences stay, so nothing is learnt from fewer examples."""
    passages: list[Tagged] = []
    i = 0
    while i < len(sentences):
        size = rng.randint(2, 6)
        chosen = sentences[i : i + size]
        i += size
        if rng.random() >= share:
            continue
        parts: list[Tagged] = []
        for sentence in chosen:
            if plain and rng.random() < 0.35:
                parts.append(list(rng.choice(plain)))
            parts.append(sentence)
        if rng.random() < 0.33:
            parts[0] = _cropped(parts[0], rng)
        passage: Tagged = []
        for part in parts:
            if passage and len(passage) + len(part) > max_words:
                break
            passage.extend(part)
        passages.append(passage)
    mixed = sentences + passages
    rng.shuffle(mixed)
    return mixed


# ------------------------------------------------------------------------------------------- output


def _dedupe(rows: Iterable[tuple[str, str]], exclude: set[str]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for text, label in rows:
        key = " ".join(text.lower().split())
        if key in seen or key in exclude:
            continue
        seen.add(key)
        out.append((text, label))
    return out


def balance(rows: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, str]]:
    """Drop random examples of the larger classes so that every label is equally frequent: a prior
    learnt from the data's proportions would tilt every borderline answer the same way."""
    by_label: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    size = min(len(group) for group in by_label.values())
    keep = {id(row) for group in by_label.values() for row in rng.sample(group, size)}
    return [row for row in rows if id(row) in keep]


def render_tsv(rows: Sequence[tuple[str, str]]) -> str:
    return "text\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows)


def render_conll(sentences: Sequence[Tagged]) -> str:
    return "\n".join("".join(f"{tok}\t{tag}\n" for tok, tag in sentence) for sentence in sentences)


def compose_all(sources_dir: Path = SOURCES, scale: float = 1.0) -> dict[str, str]:
    """Every data file's path relative to data/ -> its content."""
    sentiment = load_sentiment_sources(sources_dir)
    # one generator per task: editing the sentiment sources must not reshuffle the NER data
    rng = random.Random(f"{SEED}-sentiment")
    heldout_rows = _dedupe(compose_sentiment(sentiment, True, rng, scale * 0.12), set())
    heldout_keys = {" ".join(text.lower().split()) for text, _ in heldout_rows}
    train_rows = balance(_dedupe(compose_sentiment(sentiment, False, rng, scale), heldout_keys), rng)
    rng.shuffle(train_rows)
    rng.shuffle(heldout_rows)

    ner = load_ner_sources(sources_dir)
    rng = random.Random(f"{SEED}-ner")
    ner_heldout = compose_ner(ner, True, rng, int(400 * scale))
    ner_train = compose_ner(ner, False, rng, int(3000 * scale))
    held_sentences = {" ".join(tok for tok, _ in s) for s in ner_heldout}
    ner_train = [s for s in ner_train if " ".join(tok for tok, _ in s) not in held_sentences]
    ner_train = with_passages(ner_train, plain_sentences(ner, False), rng)
    return {
        "sentiment/train.tsv": render_tsv(train_rows),
        "sentiment/heldout.tsv": render_tsv(heldout_rows),
        "ner/train.conll": render_conll(ner_train),
        "ner/heldout.conll": render_conll(ner_heldout),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compose models/demo/data from models/demo/sources.")
    parser.add_argument("--check", action="store_true", help="only check that data/ is up to date")
    args = parser.parse_args(argv)
    files = compose_all()
    stale = [
        rel
        for rel, text in files.items()
        if not (DATA / rel).is_file() or (DATA / rel).read_text("utf-8") != text
    ]
    if args.check:
        for rel in stale:
            print(f"stale: {DATA / rel} (run python models/demo/compose.py)", file=sys.stderr)
        return 1 if stale else 0
    for rel, text in files.items():
        (DATA / rel).parent.mkdir(parents=True, exist_ok=True)
        (DATA / rel).write_text(text, encoding="utf-8")
        print(f"wrote {DATA / rel}: {text.count(chr(10))} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
