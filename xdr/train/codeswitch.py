"""Code-switched training data: a share of the words of a query (or passage) replaced by their translation
from bilingual dictionaries in the MUSE format (`word translation` per line, one file per language pair,
e.g. `en-de.txt`), applied on the fly by the batch sampler with the batch's own random generator, so a
batch stays a pure function of (seed, epoch, batch number) and a resumed run sees the same text.

For each text: the words with an entry in a dictionary from the text's language are the candidates;
round(ratio x number of words) of them (at most all candidates) are chosen uniformly, and each is replaced by
one of its translations into a target language drawn uniformly among the dictionaries that have the word.
A capitalised word gets a capitalised translation. No library applies MUSE dictionaries to text (they ship
data and evaluation code), hence this module.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from xdr.io.storage import Storage
    from xdr.train.samplers import TrainingExample

_WORD = re.compile(r"\w+", re.UNICODE)
_PAIR = re.compile(r"([a-z]{2,3})-([a-z]{2,3})")


@dataclass
class Dictionary:
    """(source language) -> word (lower case) -> [(target language, translation), ...]."""

    entries: dict[str, dict[str, list[tuple[str, str]]]] = field(default_factory=lambda: defaultdict(dict))
    rejected_lines: int = 0

    def add(self, source: str, target: str, word: str, translation: str) -> None:
        self.entries[source].setdefault(word.lower(), []).append((target, translation))


def load_muse(storage: Storage, uris: list[str]) -> Dictionary:
    """MUSE files named `<src>-<tgt>[...].txt`; a line is `word translation` (space or tab). Lines with
    another number of fields are counted as rejected, not guessed at."""
    dictionary = Dictionary()
    for uri in uris:
        found = _PAIR.match(PurePosixPath(uri).name)
        if not found:
            raise ValueError(f"{uri}: a MUSE dictionary is named <src>-<tgt>.txt (e.g. en-de.txt)")
        source, target = found.groups()
        for line in storage.read_bytes(uri).decode("utf-8").splitlines():
            fields = line.split()
            if len(fields) != 2:
                dictionary.rejected_lines += bool(line.strip())
                continue
            dictionary.add(source, target, *fields)
    return dictionary


@dataclass(frozen=True)
class CodeSwitcher:
    dictionary: Dictionary
    ratio: float
    apply_to: str = "queries"  # "queries", "passages" or "both"

    def __post_init__(self):
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"code-switch ratio {self.ratio} must lie in [0, 1]")
        if self.apply_to not in ("queries", "passages", "both"):
            raise ValueError(f"apply_to {self.apply_to!r}: expected queries, passages or both")

    def switch(self, text: str, lang: str, rng: np.random.Generator) -> str:
        words = list(_WORD.finditer(text))
        table = self.dictionary.entries.get(lang, {})
        candidates = [i for i, w in enumerate(words) if w.group().lower() in table]
        k = min(len(candidates), round(self.ratio * len(words)))
        if k == 0:
            return text
        chosen = sorted(rng.choice(candidates, size=k, replace=False).tolist())
        out, last = [], 0
        for i in chosen:
            match = words[i]
            options = table[match.group().lower()]
            _, translation = options[int(rng.integers(len(options)))]
            if match.group()[0].isupper():
                translation = translation[0].upper() + translation[1:]
            out += [text[last: match.start()], translation]
            last = match.end()
        return "".join(out) + text[last:]

    def __call__(self, example: TrainingExample, rng: np.random.Generator) -> TrainingExample:
        if self.apply_to in ("queries", "both"):
            example = replace(example, query=self.switch(example.query, example.query_lang, rng))
        if self.apply_to in ("passages", "both"):
            lang = example.passage_lang
            example = replace(example, positive=replace(example.positive, text=self.switch(
                example.positive.text, lang, rng)), negatives=tuple(
                replace(p, text=self.switch(p.text, lang, rng)) for p in example.negatives))
        return example

    def fingerprint(self) -> tuple:
        sizes = sorted((lang, len(words)) for lang, words in self.dictionary.entries.items())
        return self.ratio, self.apply_to, tuple(sizes)
