"""A synthetic corpus as a user brings it, streamed to disk (never held in memory): gzip JSON lines and
plain TSV files with a header, passages of 60-140 words in several scripts, unique ids, plus a known
number of bad rows and of ids duplicated in other files. Used by the scale benchmarks and their tests.

    python benchmarks/synthetic_corpus.py --passages 1000000 --files 32 --out /tmp/corpus-1m
    python benchmarks/synthetic_corpus.py --next-version /tmp/corpus-1m --out /tmp/corpus-1m-v2

`--next-version` writes the corpus's next version, as a monthly dump differs from the last: a share of the
passages edited, some removed, new ones added, some moved to another file; everything else as it was.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

WORDS = {
    "en": "the river city history music ancient language school people world north island war art".split(),
    "ru": "река город история музыка древний язык школа люди мир север остров война".split(),
    "ja": "川 都市 歴史 音楽 古代 言語 学校 人々 世界 北 島 戦争".split(),
    "ar": "نهر مدينة تاريخ موسيقى قديم لغة مدرسة ناس عالم شمال جزيرة حرب".split(),
    "te": "నది నగరం చరిత్ర సంగీతం పురాతన భాష పాఠశాల ప్రజలు ప్రపంచం ఉత్తర ద్వీపం".split(),
}
# Rows every corpus file may hold that validation must reject, one of each kind per planted batch.
BAD_JSONL = ['{"id": "", "text": "no id"}', '{"id": "x", "text": ""}', '{"id": "y", "text": broken',
             '["not", "an", "object"]']
BAD_TSV = ["only\ttwo", "\tno id\ttitle"]
TEXT_POOL = 4096  # distinct texts, reused under unique ids: validation cost depends on ids and sizes


def _texts(seed: int) -> list[str]:
    rng = random.Random(seed)
    langs = list(WORDS)
    pool = []
    for i in range(TEXT_POOL):
        words = WORDS[langs[i % len(langs)]]
        pool.append(" ".join(rng.choice(words) for _ in range(rng.randint(60, 140))))
    return pool


def write_corpus(out: Path, passages: int, files: int, *, bad_every: int = 50_000, duplicates: int = 100,
                 seed: int = 0) -> dict:
    """Write `passages` unique passages over `files` files (even: gzip JSON lines, odd: plain TSV), plus
    planted bad rows and ids repeated from the previous file. Returns what validation must find."""
    out.mkdir(parents=True, exist_ok=True)
    texts, rng = _texts(seed), random.Random(seed)
    bounds = [round(passages * f / files) for f in range(files + 1)]
    planted = {"passages": passages, "bad_rows": 0, "duplicates": 0, "files": []}
    for f in range(files):
        jsonl = f % 2 == 0
        path = out / (f"part-{f:03d}.jsonl.gz" if jsonl else f"part-{f:03d}.tsv")
        sink = gzip.open(path, "wt", encoding="utf-8", compresslevel=1) if jsonl else open(path, "w", encoding="utf-8")
        with sink:
            if not jsonl:
                sink.write("id\ttext\ttitle\n")
            for n, i in enumerate(range(bounds[f], bounds[f + 1])):
                text, title = texts[rng.randrange(TEXT_POOL)], f"Title {i}"
                sink.write(json.dumps({"id": f"p{i}", "title": title, "text": text}, ensure_ascii=False) + "\n"
                           if jsonl else f"p{i}\t{text}\t{title}\n")
                if n % bad_every == bad_every - 1:
                    bad = BAD_JSONL if jsonl else BAD_TSV
                    sink.write("\n".join(bad) + "\n")
                    planted["bad_rows"] += len(bad)
            if f > 0:  # ids of the previous file again: duplicates across files, found wherever they land
                dup_ids = range(bounds[f - 1], min(bounds[f], bounds[f - 1] + duplicates))
                for i in dup_ids:
                    sink.write(json.dumps({"id": f"p{i}", "text": "again"}) + "\n" if jsonl else f"p{i}\tagain\tdup\n")
                planted["duplicates"] += len(dup_ids)
        planted["files"].append(path.name)
    (out / "_planted.json").write_text(json.dumps(planted, indent=1))
    return planted


def _parse(line: str, jsonl: bool) -> dict | None:
    """A corpus line as a row, or None for a planted bad row (copied as it is)."""
    if not jsonl:
        fields = line.rstrip("\n").split("\t")
        return dict(zip(("id", "text", "title"), fields)) if len(fields) == 3 and fields[0] else None
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and row.get("id") and row.get("text") and len(row) >= 2 else None


def _open(path: Path, mode: str, gzipped: bool):
    if gzipped:
        return gzip.open(path, mode, encoding="utf-8", compresslevel=1)
    return open(path, mode[0], encoding="utf-8")


def _line(row: dict, jsonl: bool) -> str:
    if jsonl:
        return json.dumps(row, ensure_ascii=False) + "\n"
    return f"{row['id']}\t{row['text']}\t{row.get('title', '')}\n"


def write_next_version(previous: Path, out: Path, *, edited: float = 0.03, added: float = 0.02,
                       removed: float = 0.01, moved: float = 0.01, seed: int = 1) -> dict:
    """The next version of a corpus `write_corpus` wrote, file by file (one file in memory at a time):
    `edited` of the passages get another text, `removed` are left out, `moved` go to the start of the next
    file, and `added` new passages (new ids) go to the end of the last. Bad rows stay; a planted duplicate
    of a removed id is left out with it. Returns what it changed."""
    out.mkdir(parents=True, exist_ok=True)
    planted = json.loads((previous / "_planted.json").read_text())
    texts, rng = _texts(seed), random.Random(seed)
    changes = {"edited": 0, "removed": 0, "moved": 0, "added": 0}
    duplicates = 0
    gone: set[str] = set()  # removed ids: their planted duplicates go too (a few per file)
    carried: list[dict] = []  # rows moved out of the previous file
    names = planted["files"]
    for f, name in enumerate(names):
        jsonl = name.endswith(".jsonl.gz")
        source = _open(previous / name, "rt", jsonl)
        sink = _open(out / name, "wt", jsonl)
        with source, sink:
            if not jsonl:
                sink.write(source.readline())  # the header
            sink.writelines(_line(row, jsonl) for row in carried)
            carried = []
            for line in source:
                row = _parse(line, jsonl)
                if row is None or row.get("text") == "again":  # a bad row, or a planted duplicate
                    if row is None or row["id"] not in gone:
                        sink.write(line)
                        duplicates += row is not None
                    continue
                draw = rng.random()
                if draw < removed:
                    gone.add(row["id"])
                    changes["removed"] += 1
                    continue
                if draw < removed + edited:
                    row = {**row, "text": texts[rng.randrange(TEXT_POOL)] + " (edited)"}
                    changes["edited"] += 1
                if f + 1 < len(names) and rng.random() < moved:
                    carried.append(row)
                    changes["moved"] += 1
                    continue
                sink.write(_line(row, jsonl))
            if f + 1 == len(names):
                first = planted["passages"]
                for i in range(first, first + round(planted["passages"] * added)):
                    sink.write(_line({"id": f"p{i}", "title": f"Title {i}", "text": texts[rng.randrange(TEXT_POOL)]},
                                     jsonl))
                    changes["added"] += 1
    next_planted = {**planted, "passages": planted["passages"] + changes["added"] - changes["removed"],
                    "duplicates": duplicates,
                    "previous": str(previous), "changes": changes}
    (out / "_planted.json").write_text(json.dumps(next_planted, indent=1))
    return next_planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--passages", type=int)
    what.add_argument("--next-version", type=Path, metavar="CORPUS", help="a corpus this script wrote")
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.next_version:
        print(json.dumps(write_next_version(args.next_version, args.out), indent=1))
    else:
        print(json.dumps(write_corpus(args.out, args.passages, args.files), indent=1))


if __name__ == "__main__":
    main()
