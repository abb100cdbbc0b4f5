"""Reading and validating a passage corpus, and cutting it into parts.

Formats: DPR/XOR-TyDi TSV (`id \\t text \\t title`, header line), JSON lines (`id`/`docid`/`_id`,
`title`, `text`, optional `lang`) and Parquet; plain or gzip; local or s3://. A row that cannot be
used goes to `rejects/` with its file, line, reason and an excerpt; it is never silently dropped.
Valid passages are cut, in corpus order, into parts of `passages_per_part` rows: the unit of work,
commit and resume of every later stage.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from xdr import schemas
from xdr.config import CorpusConfig
from xdr.layout import RunLayout
from xdr.storage import FileRecord, Storage

EXCERPT_CHARS = 200
TSV_COLUMNS = ("id", "text", "title")
_ID_KEYS = ("id", "docid", "_id")


@dataclass
class RawRow:
    """One input row before validation: its fields, or the reason it could not be parsed."""

    source: str
    line: int
    fields: dict | None
    error: str | None = None
    excerpt: str = ""


def detect_format(uri: str, configured: str = "auto") -> str:
    if configured != "auto":
        return configured
    name = uri.lower().removesuffix(".gz")
    for suffix, fmt in ((".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"cannot tell the format of {uri!r} from its name; set corpus.format to tsv, jsonl or parquet")


def _lines(stream, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a byte stream without their line endings."""
    pending = b""
    while chunk := stream.read(chunk_bytes):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r")
    if pending:
        yield pending.rstrip(b"\r")


def _excerpt(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text[:EXCERPT_CHARS]


def _text_rows(storage: Storage, uri: str, parse) -> Iterator[RawRow]:
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path, compression="detect") as stream:
        for line_no, raw in enumerate(_lines(stream), start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield RawRow(uri, line_no, None, f"invalid UTF-8 at byte {err.start}", _excerpt(raw))
                continue
            yield parse(uri, line_no, line)


def _tsv_rows(storage: Storage, uri: str) -> Iterator[RawRow]:
    columns = TSV_COLUMNS

    def parse(source: str, line_no: int, line: str) -> RawRow | None:
        nonlocal columns
        values = next(csv.reader([line], delimiter="\t"))
        if line_no == 1 and {v.strip().lower() for v in values} >= set(TSV_COLUMNS):
            columns = tuple(v.strip().lower() for v in values)
            return None  # header line
        if len(values) != len(columns):
            return RawRow(source, line_no, None,
                          f"wrong column count: expected {len(columns)}, got {len(values)}", _excerpt(line))
        return RawRow(source, line_no, dict(zip(columns, values)), excerpt=_excerpt(line))

    for row in _text_rows(storage, uri, parse):
        if row is not None:
            yield row


def _jsonl_rows(storage: Storage, uri: str) -> Iterator[RawRow]:
    def parse(source: str, line_no: int, line: str) -> RawRow:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            return RawRow(source, line_no, None, f"invalid JSON: {err.msg}", _excerpt(line))
        if not isinstance(obj, dict):
            return RawRow(source, line_no, None, "not a JSON object", _excerpt(line))
        return RawRow(source, line_no, obj, excerpt=_excerpt(line))

    yield from _text_rows(storage, uri, parse)


def _parquet_rows(storage: Storage, uri: str) -> Iterator[RawRow]:
    fs, path = storage.filesystem(uri)
    line_no = 0
    for batch in pq.ParquetFile(fs.open_input_file(path)).iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            line_no += 1
            yield RawRow(uri, line_no, obj, excerpt=_excerpt(str(obj.get("text", ""))))


def iter_raw_rows(storage: Storage, uri: str, fmt: str) -> Iterator[RawRow]:
    readers = {"tsv": _tsv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}
    return readers[fmt](storage, uri)


class PassageValidator:
    """Turns raw rows into passages or rejects. Remembers ids: the first occurrence of an id wins."""

    def __init__(self, *, default_lang: str, max_text_chars: int):
        self.default_lang = default_lang
        self.max_text_chars = max_text_chars
        self._first_seen: dict[str, str] = {}

    def check(self, row: RawRow) -> tuple[dict | None, str | None]:
        """(passage, None) for a valid row, (None, reason) for a reject."""
        if row.error:
            return None, row.error
        fields = row.fields
        pid = next((fields[k] for k in _ID_KEYS if fields.get(k) not in (None, "")), None)
        if pid is None or not str(pid).strip():
            return None, "missing id"
        pid = str(pid).strip()
        text = fields.get("text")
        if not isinstance(text, str) or not text.strip():
            return None, "empty text"
        if len(text) > self.max_text_chars:
            return None, f"text longer than {self.max_text_chars} characters ({len(text)})"
        where = f"{row.source}:{row.line}"
        first = self._first_seen.setdefault(pid, where)
        if first != where:
            return None, f"duplicate id (first seen at {first})"
        title = fields.get("title") or ""
        lang = fields.get("lang") or fields.get("language") or self.default_lang
        return {"id": pid, "title": str(title), "text": text, "lang": str(lang)}, None


@dataclass
class PartInfo:
    part: int
    passages: int
    rejects: int
    files: list[FileRecord]


@dataclass
class PrepareSummary:
    rows_read: int = 0
    passages: int = 0
    rejects: int = 0
    reject_reasons: Counter = field(default_factory=Counter)
    parts: list[PartInfo] = field(default_factory=list)
    source_files: list[str] = field(default_factory=list)

    @property
    def reject_fraction(self) -> float:
        return self.rejects / self.rows_read if self.rows_read else 0.0


def _reason_kind(reason: str) -> str:
    """The reason without row-specific detail, for the summary counts."""
    return reason.split(" (")[0].split(":")[0]


def prepare_parts(storage: Storage, config: CorpusConfig, run_uri: str) -> PrepareSummary:
    """Read and validate the corpus once, writing passages/ and rejects/ part files.

    Parts already committed by an earlier, interrupted run are not written again (the cut is
    deterministic, so their content is the same). Raises ValueError when nothing is valid or the
    reject fraction exceeds `config.max_reject_fraction`.
    """
    files = storage.expand(config.path)
    if not files:
        raise ValueError(f"corpus.path {config.path!r} names no files")
    summary = PrepareSummary(source_files=files)
    layout = RunLayout(run_uri)
    validator = PassageValidator(default_lang=config.default_lang, max_text_chars=config.max_text_chars)
    passages: list[dict] = []
    rejects: list[dict] = []

    def flush() -> None:
        part = len(summary.parts)
        passages_uri, rejects_uri = layout.part("passages", part), layout.part("rejects", part)
        if storage.exists(passages_uri):  # committed by an earlier run
            files = [storage.record(rejects_uri), storage.record(passages_uri)]
        else:
            files = [storage.write_table(rejects_uri, pa.Table.from_pylist(rejects, schema=schemas.REJECTS)),
                     storage.write_table(passages_uri, pa.Table.from_pylist(passages, schema=schemas.PASSAGES))]
        summary.parts.append(PartInfo(part, len(passages), len(rejects), files))
        passages.clear()
        rejects.clear()

    for uri in files:
        for row in iter_raw_rows(storage, uri, detect_format(uri, config.format)):
            summary.rows_read += 1
            passage, reason = validator.check(row)
            if passage is not None:
                passages.append(passage)
                summary.passages += 1
                if len(passages) == config.passages_per_part:
                    flush()
            else:
                rejects.append({"source": row.source, "line": row.line, "reason": reason, "excerpt": row.excerpt})
                summary.rejects += 1
                summary.reject_reasons[_reason_kind(reason)] += 1
    if passages or rejects or not summary.parts:
        flush()

    if summary.passages == 0:
        raise ValueError(f"no valid passage in {config.path!r} ({summary.rejects} rows rejected: "
                         f"{dict(summary.reject_reasons)}); see {layout.folder('rejects')}")
    if summary.reject_fraction > config.max_reject_fraction:
        raise ValueError(
            f"{summary.rejects} of {summary.rows_read} rows rejected ({summary.reject_fraction:.2%} > "
            f"corpus.max_reject_fraction {config.max_reject_fraction:.2%}): {dict(summary.reject_reasons)}. "
            f"The rows and reasons are in {layout.folder('rejects')}; fix the corpus or raise the limit.")
    return summary
