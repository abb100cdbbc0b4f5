"""Training data for dual encoders: Tevatron/XOR-style triplet files and parallel QA sets.

- **Triplets** (Tevatron, XOR-TyDi style JSON lines): `{"query": str, "positive_passages": [{"title", "text"}],
  "negative_passages": [...], "query_lang"?, "passage_lang"?}`. One query with its own passages; the
  batch samplers take them as they are.
- **Parallel QA**: the same item (question + its paragraph) in several languages, from which X-X and X-Y
  triplets are drawn. XQuAD files (SQuAD format, one `xquad.<lang>.json` per language, linked by question
  id) or JSON lines `{"id", "lang", "question", "passage", "title"?, "group"?}` (one row per item and
  language; `group` names the article, whose other paragraphs serve as negatives).

Files may be local or s3://. A row that cannot be used is rejected with its file, line and reason, never
dropped silently; the loaders return the rejects beside the data.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from xdr.eval.datasets import xquad_paragraphs

if TYPE_CHECKING:  # type hints only: the GPU benchmark imports this module where pyarrow may be missing
    from xdr.io.storage import Storage

Row = TypeVar("Row")


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


@dataclass(frozen=True)
class Triplet:
    """A query with its positive and hard negatives, as given (Tevatron form)."""

    query: str
    positive: Passage
    negatives: tuple[Passage, ...]
    query_lang: str = ""
    passage_lang: str = ""


@dataclass
class ParallelItem:
    """One question and its paragraph in every language of the set; `group` = the article."""

    item_id: str
    group: str
    question: dict[str, str] = field(default_factory=dict)  # lang -> question
    passage: dict[str, Passage] = field(default_factory=dict)  # lang -> paragraph


@dataclass(frozen=True)
class TrainReject:
    source: str
    line: int
    reason: str


@dataclass
class ParallelSet:
    items: list[ParallelItem]
    languages: tuple[str, ...]


def _passage(obj, where: str) -> Passage:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
        raise ValueError(f"{where} has no text")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise ValueError(f"{where} title is not a string")
    return Passage(title, obj["text"])


def parse_json_lines(storage: Storage, uris: list[str], rejects: list[TrainReject],
                     parse: Callable[[dict], Row]) -> list[Row]:
    """parse(object) for every JSON-object line of `uris`, in order; a line that is no JSON object, or that
    `parse` refuses with a ValueError, becomes a TrainReject (file, line, reason) instead."""
    parsed = []
    for uri in uris:
        for line_no, raw in enumerate(storage.read_bytes(uri).splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError too
                    raise ValueError(f"invalid JSON: {err}"[:200]) from None
                if not isinstance(obj, dict):
                    raise ValueError("invalid JSON: not a JSON object")
                parsed.append(parse(obj))
            except ValueError as err:
                rejects.append(TrainReject(uri, line_no, str(err)))
    return parsed


def _triplets_of(obj: dict) -> list[Triplet]:
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ValueError("missing query")
    positives = obj.get("positive_passages")
    if not isinstance(positives, list) or not positives:
        raise ValueError("no positive_passages")
    negatives = obj.get("negative_passages") or []
    if not isinstance(negatives, list):
        raise ValueError("negative_passages is not a list")
    negs = tuple(_passage(n, "a negative passage") for n in negatives)
    return [Triplet(query, _passage(p, "a positive passage"), negs,
                    str(obj.get("query_lang") or obj.get("lang") or ""), str(obj.get("passage_lang") or ""))
            for p in positives]


def load_triplets(storage: Storage, uris: list[str]) -> tuple[list[Triplet], list[TrainReject]]:
    """Tevatron-style JSON lines: every positive of a row becomes a triplet with the row's negatives."""
    rejects: list[TrainReject] = []
    rows = parse_json_lines(storage, uris, rejects, _triplets_of)
    return [t for row in rows for t in row], rejects


def _complete(items: dict[str, ParallelItem], languages: set[str], source: str,
              rejects: list[TrainReject]) -> ParallelSet:
    """Keep the items present in every language; the samplers draw languages per batch, so an item
    missing one could not take part in every batch kind."""
    kept = []
    for item in items.values():
        missing = sorted(languages - set(item.question))
        if missing:
            rejects.append(TrainReject(source, 0, f"item {item.item_id} lacks languages {missing}"))
        else:
            kept.append(item)
    return ParallelSet(kept, tuple(sorted(languages)))


def load_xquad(storage: Storage, folder: str, *, languages: tuple[str, ...] | None = None,
               articles: range | None = None) -> tuple[ParallelSet, list[TrainReject]]:
    """XQuAD's `xquad.<lang>.json` files. `articles` keeps only those article numbers (1-based, in file
    order), e.g. range(1, 33) for training and range(33, 49) held out."""
    files = storage.list_files(folder, suffix=".json")
    by_lang = {f.rsplit("/", 1)[-1].removeprefix("xquad.").removesuffix(".json"): f
               for f in files if f.rsplit("/", 1)[-1].startswith("xquad.")}
    if languages:
        absent = sorted(set(languages) - set(by_lang))
        if absent:
            raise ValueError(f"{folder} has no xquad.<lang>.json for {absent}; present: {sorted(by_lang)}")
        by_lang = {lang: by_lang[lang] for lang in languages}
    if not by_lang:
        raise ValueError(f"no xquad.<lang>.json files in {folder}")
    items: dict[str, ParallelItem] = {}
    rejects: list[TrainReject] = []
    for lang, uri in sorted(by_lang.items()):
        data = json.loads(storage.read_bytes(uri))["data"]
        for number, title, context, qas in xquad_paragraphs(data):
            if articles is not None and number not in articles:
                continue
            passage = Passage(title, context)
            for qa in qas:
                item = items.setdefault(qa["id"], ParallelItem(qa["id"], f"article-{number}"))
                item.question[lang] = qa["question"]
                item.passage[lang] = passage
    return _complete(items, set(by_lang), folder, rejects), rejects


def load_parallel_jsonl(storage: Storage, uris: list[str]) -> tuple[ParallelSet, list[TrainReject]]:
    """Rows `{"id", "lang", "question", "passage", "title"?, "group"?}`, one per item and language."""
    items: dict[str, ParallelItem] = {}
    rejects: list[TrainReject] = []
    languages: set[str] = set()

    def add(obj: dict) -> None:
        for key in ("id", "lang", "question", "passage"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise ValueError(f"missing {key}")
        item = items.setdefault(obj["id"], ParallelItem(obj["id"], str(obj.get("group") or obj["id"])))
        if obj["lang"] in item.question:
            raise ValueError(f"duplicate ({obj['id']}, {obj['lang']})")
        item.question[obj["lang"]] = obj["question"]
        item.passage[obj["lang"]] = Passage(str(obj.get("title") or ""), obj["passage"])
        languages.add(obj["lang"])

    parse_json_lines(storage, uris, rejects, add)
    if not items:
        raise ValueError(f"no usable rows in {uris}: {[r.reason for r in rejects[:5]]}")
    return _complete(items, languages, ",".join(uris), rejects), rejects


def negatives_by_group(items: list[ParallelItem]) -> dict[str, list[int]]:
    """Indexes of the items of each group: the other paragraphs of the same article are the negatives."""
    groups = defaultdict(list)
    for i, item in enumerate(items):
        groups[item.group].append(i)
    return dict(groups)
