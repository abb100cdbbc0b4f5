"""Bilingual dictionaries derived from XQuAD's parallel questions by word alignment, with their held-out
precision measured (issue 9: no published dictionary is at hand offline, and none may be invented).

    pip install -e .[experiments]       # eflomal, the aligner
    python benchmarks/derive_xquad_dictionary.py --out exp-output/dictionaries \
        --json docs/results/data/eval/xquad-dictionary.json
    python benchmarks/derive_xquad_dictionary.py --languages en de --out /tmp/dicts   # seconds: what the tests run

Method: for every ordered pair of XQuAD's space-delimited languages (ar de el en es hi ro ru tr vi; zh and th
are written without spaces and have no word segmenter offline), the questions of articles 1-28 (the
experiments' training articles) are word-aligned with eflomal (Östling & Tiedemann 2016, a Bayesian IBM-style
aligner) in both directions, symmetrised by intersection. A source word's translation is its most often
linked target word, kept when it was linked at least `--min-links` times and in at least `--min-share` of the
source word's links; identical strings (names, numbers) are dropped, as switching them changes nothing.
Words are `\\w+` runs, lower-cased: the tokenisation the code-switcher matches.

Measured: on the questions of the held-out articles 29-48, for every question pair and every dictionary word
in the source question, whether the translation occurs in the parallel target question (precision), against
the same dictionary with its translations shuffled among its entries (the chance level).
Writes MUSE files `<src>-<tgt>.txt` (`word translation` per line) for xdr's `code_switch.dictionaries`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xdr.io.storage import Storage  # noqa: E402
from xdr.train.data import load_xquad  # noqa: E402

SPACED = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "tr", "vi")
WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def links(src: list[list[str]], tgt: list[list[str]]) -> list[set[tuple[int, int]]]:
    """Intersection of eflomal's forward and reverse alignments, per sentence pair."""
    import eflomal

    with tempfile.TemporaryDirectory() as folder:
        fwd, rev = Path(folder) / "fwd", Path(folder) / "rev"
        eflomal.Aligner().align([" ".join(s) for s in src], [" ".join(t) for t in tgt],
                                links_filename_fwd=str(fwd), links_filename_rev=str(rev), quiet=True)
        parse = lambda line: {tuple(map(int, x.split("-"))) for x in line.split()}  # noqa: E731
        return [parse(a) & parse(b) for a, b in zip(fwd.read_text().splitlines(), rev.read_text().splitlines())]


def derive(src: list[list[str]], tgt: list[list[str]], min_links: int, min_share: float) -> dict[str, str]:
    pair_counts, word_counts = Counter(), Counter()
    for s, t, pairs in zip(src, tgt, links(src, tgt)):
        for i, j in pairs:
            pair_counts[s[i], t[j]] += 1
            word_counts[s[i]] += 1
    best: dict[str, tuple[str, int]] = {}
    for (s, t), n in pair_counts.items():
        if n > best.get(s, ("", 0))[1]:
            best[s] = (t, n)
    return {s: t for s, (t, n) in best.items()
            if s != t and n >= min_links and n / word_counts[s] >= min_share}


def precision(dictionary: dict[str, str], src: list[list[str]], tgt: list[list[str]]) -> tuple[int, int]:
    """(hits, uses): dictionary words in held-out source questions and how often their translation is in the
    parallel question."""
    hits = uses = 0
    for s, t in zip(src, tgt):
        present = set(t)
        for w in set(s) & dictionary.keys():
            uses += 1
            hits += dictionary[w] in present
    return hits, uses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xquad", type=Path, default=REPO.parent / "shared" / "data" / "xquad")
    parser.add_argument("--out", type=Path, default=REPO / "exp-output" / "dictionaries")
    parser.add_argument("--min-links", type=int, default=2)
    parser.add_argument("--min-share", type=float, default=0.5)
    parser.add_argument("--languages", nargs="+", default=list(SPACED), choices=SPACED,
                        help="a subset of the space-delimited languages (every ordered pair of them)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    languages = tuple(args.languages)

    storage = Storage()
    train, _ = load_xquad(storage, str(args.xquad), languages=languages, articles=range(1, 29))
    held, _ = load_xquad(storage, str(args.xquad), languages=languages, articles=range(29, 49))
    questions = {split: {x: [words(item.question[x]) for item in data.items] for x in languages}
                 for split, data in (("train", train), ("held", held))}
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = {}
    for a, b in itertools.permutations(languages, 2):
        dictionary = derive(questions["train"][a], questions["train"][b], args.min_links, args.min_share)
        (args.out / f"{a}-{b}.txt").write_text("".join(f"{s} {t}\n" for s, t in sorted(dictionary.items())),
                                               encoding="utf-8")
        hits, uses = precision(dictionary, questions["held"][a], questions["held"][b])
        keys = list(dictionary)
        shuffled = dict(zip(keys, rng.permutation([dictionary[k] for k in keys]).tolist()))
        chance_hits, _ = precision(shuffled, questions["held"][a], questions["held"][b])
        covered = np.mean([len(set(s) & dictionary.keys()) / max(1, len(set(s))) for s in questions["held"][a]])
        rows[f"{a}-{b}"] = {"entries": len(dictionary), "held_out_uses": uses,
                            "precision": hits / uses if uses else float("nan"),
                            "chance_precision": chance_hits / uses if uses else float("nan"),
                            "held_out_word_coverage": float(covered)}
        print(f"{a}-{b}: {len(dictionary)} entries, held-out precision {rows[f'{a}-{b}']['precision']:.3f} "
              f"(shuffled {rows[f'{a}-{b}']['chance_precision']:.3f}) over {uses} uses, "
              f"coverage {covered:.2f}", flush=True)
    by_source = defaultdict(list)
    for pair, row in rows.items():
        by_source[pair.split("-")[0]].append(row)
    lines = [f"Dictionaries from XQuAD questions of articles 1-28 (eflomal, intersection, min links {args.min_links}, "
             f"min share {args.min_share}); precision on the questions of articles 29-48", "",
             "| source | pairs | entries (mean) | held-out precision | shuffled (chance) | word coverage |",
             "|---|---:|---:|---:|---:|---:|"]
    for source, group in sorted(by_source.items()):
        hits = sum(r["precision"] * r["held_out_uses"] for r in group)
        chance = sum(r["chance_precision"] * r["held_out_uses"] for r in group)
        uses = sum(r["held_out_uses"] for r in group)
        lines.append(f"| {source} | {len(group)} | {np.mean([r['entries'] for r in group]):.0f} | {hits / uses:.3f} | "
                     f"{chance / uses:.3f} | {np.mean([r['held_out_word_coverage'] for r in group]):.2f} |")
    uses = sum(r["held_out_uses"] for r in rows.values())
    total = (sum(r["precision"] * r["held_out_uses"] for r in rows.values()) / uses,
             sum(r["chance_precision"] * r["held_out_uses"] for r in rows.values()) / uses)
    lines.append(f"| all | {len(rows)} | {np.mean([r['entries'] for r in rows.values()]):.0f} | {total[0]:.3f} | "
                 f"{total[1]:.3f} | {np.mean([r['held_out_word_coverage'] for r in rows.values()]):.2f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"settings": {"min_links": args.min_links, "min_share": args.min_share,
                                                      "languages": languages, "train_articles": [1, 28],
                                                      "held_out_articles": [29, 48]},
                                         "pairs": rows, "table": text}, indent=2))
        args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
