"""Loaders for the evaluation data sets (read in place from ../shared/data or a user's copy).

- LAReQA (XQuAD-R, MLQA-R): every sentence of every paragraph in every language is a candidate, its text
  `sentence + " " + paragraph`; a question's relevant candidates are the answer-bearing sentences in every
  language where the question (by id) exists.
- XQuAD: the SQuAD-format files, parallel across 12 languages.
- BEIR / MIRACL: corpus JSON lines, topics TSV, qrels TSV; MIRACL-yo from the Vespa feed (zstd JSON lines).
- XOR-Retrieve: questions JSON lines (`id, question, answers, lang`) against a DPR TSV corpus.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

XQUAD_R_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
XQUAD_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")


@dataclass(frozen=True)
class Candidate:
    lang: str
    paragraph: int  # index of the paragraph across the file (same in every language)
    sentence: int
    text: str


@dataclass(frozen=True)
class Question:
    qid: str
    lang: str
    text: str
    paragraph: int = -1
    answers: tuple[str, ...] = ()


@dataclass
class LareqaDataset:
    candidates: list[Candidate]
    questions: dict[str, list[Question]]
    relevant: dict[tuple[str, str], set[int]] = field(default_factory=dict)  # (lang, qid) -> candidate rows

    @property
    def languages(self) -> list[str]:
        return sorted(self.questions)


def _answer_sentence(breaks: list[list[int]], answer_start: int) -> int:
    for i, (start, end) in enumerate(breaks):
        if start <= answer_start <= end:
            return i
    raise ValueError(f"answer at {answer_start} lies in no sentence {breaks}")


def load_lareqa(folder: str | Path, languages: tuple[str, ...] | None = None,
                articles: range | None = None) -> LareqaDataset:
    """`{lang}.json` files with `sentences` and `sentence_breaks` per paragraph (LAReQA format). `articles`
    keeps those article numbers only (1-based, file order; XQuAD-R's order is XQuAD's), e.g. range(33, 49)
    for the articles a model trained on XQuAD 1-32 never saw."""
    folder = Path(folder)
    languages = languages or tuple(sorted(p.stem for p in folder.glob("*.json")))
    if not languages:
        raise ValueError(f"no <lang>.json files in {folder}")
    candidates: list[Candidate] = []
    questions: dict[str, list[Question]] = {}
    answer_row: dict[tuple[str, str], int] = {}  # (lang, qid) -> its answer sentence's candidate row
    for lang in languages:
        path = folder / f"{lang}.json"
        if not path.exists():
            raise ValueError(f"{path} not found; languages present: {sorted(p.stem for p in folder.glob('*.json'))}")
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        questions[lang] = []
        paragraph = -1
        for number, article in enumerate(data, start=1):
            if articles is not None and number not in articles:
                continue
            for para in article["paragraphs"]:
                paragraph += 1
                first = len(candidates)
                candidates.extend(Candidate(lang, paragraph, i, f"{s} {para['context']}")
                                  for i, s in enumerate(para["sentences"]))
                for qa in para["qas"]:
                    sentence = _answer_sentence(para["sentence_breaks"], qa["answers"][0]["answer_start"])
                    answer_row[(lang, qa["id"])] = first + sentence
                    questions[lang].append(Question(qa["id"], lang, qa["question"], paragraph,
                                                    tuple(a["text"] for a in qa["answers"])))
    by_qid: dict[str, set[int]] = defaultdict(set)
    for (_, qid), row in answer_row.items():
        by_qid[qid].add(row)
    relevant = {(lang, q.qid): by_qid[q.qid] for lang, qs in questions.items() for q in qs}
    return LareqaDataset(candidates, questions, relevant)


@dataclass
class XquadDataset:
    """Parallel paragraphs and questions: paragraphs[lang][p] is paragraph p's text in `lang`."""

    paragraphs: dict[str, list[str]]
    titles: list[str]
    questions: dict[str, list[Question]]


def xquad_paragraphs(data: list[dict]) -> Iterator[tuple[int, str, str, list[dict]]]:
    """(article number from 1, title, context, questions) per paragraph of an XQuAD file's `data`, in file
    order: the one reader of the format, for evaluation and for training."""
    for number, article in enumerate(data, start=1):
        for para in article["paragraphs"]:
            yield number, article.get("title", ""), para["context"], para["qas"]


def load_xquad(folder: str | Path, languages: tuple[str, ...] = XQUAD_LANGUAGES) -> XquadDataset:
    folder = Path(folder)
    paragraphs: dict[str, list[str]] = {}
    questions: dict[str, list[Question]] = {}
    titles: list[str] = []
    for lang in languages:
        data = json.loads((folder / f"xquad.{lang}.json").read_text(encoding="utf-8"))["data"]
        paragraphs[lang], questions[lang] = [], []
        lang_titles = []
        for _, title, context, qas in xquad_paragraphs(data):
            p = len(paragraphs[lang])
            paragraphs[lang].append(context)
            lang_titles.append(title)
            questions[lang].extend(Question(qa["id"], lang, qa["question"], p, tuple(a["text"] for a in qa["answers"]))
                                   for qa in qas)
        titles = titles or lang_titles
    counts = {lang: len(p) for lang, p in paragraphs.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"XQuAD languages are not parallel: paragraphs per language {counts}")
    return XquadDataset(paragraphs, titles, questions)


@dataclass
class BeirDataset:
    corpus: dict[str, tuple[str, str]]  # doc id -> (title, text)
    topics: dict[str, str]
    qrels: dict[str, dict[str, int]]


def read_topics(path: str | Path) -> dict[str, str]:
    topics = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            qid, _, text = line.partition("\t")
            topics[qid] = text
    return topics


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """TREC qrels (`qid Q0 docid rel`, tabs or spaces) or BEIR's (`query-id corpus-id score`, header)."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 4:
            qid, _, doc, rel = parts
        elif len(parts) == 3 and parts[2].lstrip("-").isdigit():
            qid, doc, rel = parts
        else:
            continue  # header or blank
        qrels[qid][doc] = int(rel)
    return dict(qrels)


def load_beir(corpus_jsonl: str | Path, topics_tsv: str | Path, qrels_tsv: str | Path) -> BeirDataset:
    corpus = {}
    with open(corpus_jsonl, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                corpus[str(row.get("_id", row.get("docid", row.get("id"))))] = (row.get("title", ""), row["text"])
    return BeirDataset(corpus, read_topics(topics_tsv), read_qrels(qrels_tsv))


def load_miracl_yo(folder: str | Path) -> BeirDataset:
    """MIRACL v1.0 Yoruba: the whole corpus (Vespa feed, zstd JSON lines), dev topics and qrels."""
    import zstandard

    folder = Path(folder)
    corpus = {}
    with open(folder / "yo-feed.jsonl.zst", "rb") as raw:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
        for line in text:
            if line.strip():
                fields = json.loads(line)["fields"]
                corpus[fields["doc_id"]] = (fields.get("title", ""), fields["text"])
    return BeirDataset(corpus, read_topics(folder / "topics.miracl-v1.0-yo-dev.tsv"),
                       read_qrels(folder / "qrels.miracl-v1.0-yo-dev.tsv"))


def load_xor_questions(path: str | Path) -> list[Question]:
    """XOR-Retrieve questions: JSON lines with id, question, answers, lang."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(Question(str(row["id"]), row["lang"], row["question"], answers=tuple(row["answers"])))
    return out
