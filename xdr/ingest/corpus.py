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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from xdr.io.storage import Storage

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


def reject_reason(kind: str, detail: str = "") -> str:
    """A reject's reason: a fixed kind (counted in the summary), then the row's detail (kept in rejects/)."""
    return f"{kind}: {detail}" if detail else kind


def duplicate_reason(first_seen_at: str) -> str:
    return reject_reason("duplicate id", f"first seen at {first_seen_at}")


def reason_kind(reason: str) -> str:
    """The kind of a reason made by `reject_reason`."""
    return reason.partition(": ")[0]


def detect_format(uri: str, configured: str = "auto") -> str:
    if configured != "auto":
        return configured
    name = uri.lower().removesuffix(".gz")
    for suffix, fmt in ((".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"cannot tell the format of {uri!r} from its name; set corpus.format to tsv, jsonl or parquet")


@dataclass(frozen=True)
class _OverlongLine:
    """A line longer than the limit: its first bytes (for the excerpt) and its length. The rest is never held."""

    head: bytes
    length: int


def split_lines(stream, *, max_line_bytes: int, chunk_bytes: int = 1 << 20) -> Iterator[bytes | _OverlongLine]:
    """Lines of a byte stream without their line endings (LF or CRLF). Memory is bounded by the limit: a
    longer line (a gzip bomb, a file without newlines) comes back as an _OverlongLine."""
    pending = bytearray()
    overlong = 0  # bytes of the current line seen so far once it is over the limit

    def finish() -> bytes | _OverlongLine:
        nonlocal overlong
        line: bytes | _OverlongLine
        if overlong:
            line, overlong = _OverlongLine(bytes(pending[:EXCERPT_CHARS]), overlong), 0
        else:
            line = bytes(pending[:-1] if pending.endswith(b"\r") else pending)
        pending.clear()
        return line

    while chunk := stream.read(chunk_bytes):
        start = 0
        while start <= len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end == -1 else chunk[start:end]
            if overlong:
                overlong += len(piece)
            else:
                pending += piece
                if len(pending) > max_line_bytes:
                    overlong = len(pending)
                    del pending[EXCERPT_CHARS:]
            if end == -1:
                break
            yield finish()
            start = end + 1
    if pending or overlong:
        yield finish()


def _excerpt(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text[:EXCERPT_CHARS].encode("utf-8", errors="replace").decode("utf-8")  # surrogates made writable


class LinesInRange:
    """A byte stream of the lines that start in [start, end) of a seekable file. The line in progress at
    `start` belongs to the range before; the last line is read on past `end` to its newline. So ranges
    cut anywhere give every line to exactly one range, and memory stays bounded by the read size."""

    def __init__(self, file, start: int, end: int):
        self.file, self.end = file, end
        self.pos = self._first_line_start(start)
        self.done = self.pos >= end

    def _first_line_start(self, start: int) -> int:
        if start == 0:
            return 0
        self.file.seek(start - 1)
        pos = start - 1
        while chunk := self.file.read(1 << 16):
            newline = chunk.find(b"\n")
            if newline >= 0:
                pos += newline + 1
                self.file.seek(pos)
                return pos
            pos += len(chunk)
        return pos  # the file ends inside the line: nothing starts in this range

    def read(self, size: int) -> bytes:
        if self.done:
            return b""
        if self.pos < self.end:
            data = self.file.read(min(size, self.end - self.pos))
            self.pos += len(data)
            if not data or (self.pos == self.end and data.endswith(b"\n")):
                self.done = True  # the range ends on a line end: the next line is the next range's
            return data
        data = self.file.read(size)  # past the end: finish the last line
        newline = data.find(b"\n")
        if not data or newline >= 0:
            self.done = True
            return data[: newline + 1]
        return data


@dataclass
class ReadCount:
    """Lines (or Parquet rows) a reader went through, blank lines included: where the next range's
    line numbers start."""

    lines: int = 0


@contextmanager
def _open_lines(storage: Storage, uri: str, start: int, end: int | None):
    """The file's bytes (gzip decompressed), or only the lines of a byte range of an uncompressed file."""
    fs, path = storage.filesystem(uri)
    if end is None:
        with fs.open_input_stream(path, compression="detect") as stream:
            yield stream
    else:
        with fs.open_input_file(path) as file:
            yield LinesInRange(file, start, end)


def _text_rows(storage: Storage, uri: str, parse, max_line_bytes: int, start: int = 0, end: int | None = None,
               count: ReadCount | None = None) -> Iterator[RawRow]:
    """Rows of a text file, or of the lines that start in a byte range of it (line numbers then count
    from the range's first line)."""
    count = count if count is not None else ReadCount()
    line_no = 0
    try:
        with _open_lines(storage, uri, start, end) as stream:
            for line_no, raw in enumerate(split_lines(stream, max_line_bytes=max_line_bytes), start=1):
                count.lines = line_no
                if isinstance(raw, _OverlongLine):
                    yield RawRow(uri, line_no, None, reject_reason(
                        "line too long", f"{raw.length:,} bytes > corpus.max_line_bytes {max_line_bytes:,}"),
                        _excerpt(raw.head))
                    continue
                if line_no == 1 and start == 0 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
                    raw = raw[3:]
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield RawRow(uri, line_no, None, reject_reason("invalid UTF-8", f"at byte {err.start}"),
                                 _excerpt(raw))
                    continue
                row = parse(uri, line_no, line)
                if row is not None:
                    yield row
    except OSError as err:  # truncated or corrupt compressed data, or the storage failing: not a row's fault
        where = f"after line {line_no}" if start == 0 else f"after line {line_no} of the range from byte {start:,}"
        raise OSError(f"{uri}: reading failed {where} ({err}); fix or remove the file") from err


def _tsv_header(values: list[str]) -> tuple[str, ...] | None:
    """The column names if a first line is a header naming at least id, text and title."""
    names = tuple(v.strip().lower() for v in values)
    return names if set(names) >= set(TSV_COLUMNS) else None


def _tsv_file_columns(storage: Storage, uri: str, max_line_bytes: int) -> tuple[str, ...]:
    """The columns a file's header line names (for ranges that start after it), else the default."""
    with _open_lines(storage, uri, 0, None) as stream:
        first = next(split_lines(stream, max_line_bytes=max_line_bytes), b"")
    if isinstance(first, _OverlongLine):
        return TSV_COLUMNS
    try:
        values = next(csv.reader([first.removeprefix(b"\xef\xbb\xbf").decode("utf-8")], delimiter="\t"), [])
    except (UnicodeDecodeError, csv.Error):
        return TSV_COLUMNS
    return _tsv_header(values) or TSV_COLUMNS


def _tsv_rows(storage: Storage, uri: str, max_line_bytes: int, **span) -> Iterator[RawRow]:
    csv.field_size_limit(max(csv.field_size_limit(), max_line_bytes))  # csv's default caps a field at 128 KiB
    at_file_start = span.get("start", 0) == 0
    columns = TSV_COLUMNS if at_file_start else _tsv_file_columns(storage, uri, max_line_bytes)

    def parse(source: str, line_no: int, line: str) -> RawRow | None:
        nonlocal columns
        try:
            values = next(csv.reader([line], delimiter="\t"))
        except csv.Error as err:
            return RawRow(source, line_no, None, reject_reason("invalid TSV", str(err)), _excerpt(line))
        if line_no == 1 and at_file_start and _tsv_header(values):
            columns = _tsv_header(values) or columns
            return None  # header line
        if len(values) != len(columns):
            return RawRow(source, line_no, None, reject_reason(
                "wrong column count", f"expected {len(columns)}, got {len(values)}"), _excerpt(line))
        return RawRow(source, line_no, dict(zip(columns, values)), excerpt=_excerpt(line))

    yield from _text_rows(storage, uri, parse, max_line_bytes, **span)


def _jsonl_rows(storage: Storage, uri: str, max_line_bytes: int, **span) -> Iterator[RawRow]:
    def parse(source: str, line_no: int, line: str) -> RawRow:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            return RawRow(source, line_no, None, reject_reason("invalid JSON", err.msg), _excerpt(line))
        except RecursionError:
            return RawRow(source, line_no, None, reject_reason("invalid JSON", "nested too deeply"), _excerpt(line))
        if not isinstance(obj, dict):
            return RawRow(source, line_no, None, reject_reason("not a JSON object", f"got {_type_name(obj)}"),
                          _excerpt(line))
        return RawRow(source, line_no, obj, excerpt=_excerpt(line))

    yield from _text_rows(storage, uri, parse, max_line_bytes, **span)


def _parquet_values(batch: pa.RecordBatch) -> Iterator[dict | UnicodeDecodeError]:
    """The batch's rows as dicts; a row whose string column holds invalid UTF-8 comes back as the error."""
    try:
        yield from batch.to_pylist()
    except UnicodeDecodeError:
        for i in range(batch.num_rows):
            try:
                yield batch.slice(i, 1).to_pylist()[0]
            except UnicodeDecodeError as err:
                yield err


def _row_group_start(row_group) -> int:
    """Byte offset where a row group's data begins (its first column chunk)."""
    column = row_group.column(0)
    return column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset


def _parquet_rows(storage: Storage, uri: str, max_line_bytes: int, start: int = 0, end: int | None = None,
                  count: ReadCount | None = None) -> Iterator[RawRow]:
    """Rows of a Parquet file, or of the row groups that start in a byte range of it. `line` is the
    row number (counted from the range's first row)."""
    count = count if count is not None else ReadCount()
    fs, path = storage.filesystem(uri)
    try:
        parquet = pq.ParquetFile(fs.open_input_file(path), pre_buffer=False)
    except pa.ArrowInvalid as err:
        raise ValueError(f"{uri}: not a readable Parquet file ({err}); fix or remove it") from err
    groups = [g for g in range(parquet.num_row_groups)
              if end is None or start <= _row_group_start(parquet.metadata.row_group(g)) < end]
    line_no = 0
    # unthreaded: the threaded reader reads ahead, holding hundreds of MB of a large file
    for batch in parquet.iter_batches(batch_size=4096, row_groups=groups, use_threads=False) if groups else ():
        for obj in _parquet_values(batch):
            line_no += 1
            count.lines = line_no
            if isinstance(obj, UnicodeDecodeError):
                yield RawRow(uri, line_no, None, reject_reason("invalid UTF-8", f"at byte {obj.start} of a value"),
                             _excerpt(obj.object))
                continue
            yield RawRow(uri, line_no, obj, excerpt=_excerpt(str(obj.get("text", ""))))


def iter_raw_rows(storage: Storage, uri: str, fmt: str, *, max_line_bytes: int = 8 << 20, start: int = 0,
                  end: int | None = None, count: ReadCount | None = None) -> Iterator[RawRow]:
    """Rows of a corpus file; with `end`, only the rows that start in the byte range [start, end) of an
    uncompressed file, numbered from that range's first line. `count` receives the lines gone through."""
    readers: dict[str, Callable[..., Iterator[RawRow]]] = {"tsv": _tsv_rows, "jsonl": _jsonl_rows,
                                                            "parquet": _parquet_rows}
    return readers[fmt](storage, uri, max_line_bytes, start=start, end=end, count=count)


def _type_name(value) -> str:
    """A value's type as a user reads it in JSON (or Parquet) terms."""
    names = {dict: "object", list: "array", tuple: "array", bool: "boolean", int: "number", float: "number",
             str: "string", bytes: "binary", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _text_value(fields: dict, name: str, *, required: bool) -> tuple[str | None, str | None]:
    """(value, None) or (None, reason) for a text field. Binary values (Parquet) must be UTF-8."""
    value = fields.get(name)
    if value is None:
        return None, (reject_reason(f"missing {name}") if required else None)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            return None, reject_reason("invalid UTF-8", f"{name}, at byte {err.start}")
    if not isinstance(value, str):
        return None, reject_reason(f"{name} is not a string", f"got {_type_name(value)}")
    return value, _unicode_problem(name, value)


def _unicode_problem(name: str, value: str) -> str | None:
    """Text that cannot be written as UTF-8 (a lone surrogate from a JSON escape) or that holds NUL,
    which C-level tokenizers treat as the end of the string."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return reject_reason("invalid Unicode", f"lone surrogate in {name} at character {err.start}")
    if "\x00" in value:
        return reject_reason("NUL character", f"in {name} at character {value.index(chr(0))}")
    return None


class PassageValidator:
    """Turns raw rows into passages or rejects. Remembers ids: the first occurrence of an id wins.

    Ids are strings or integers; text, title and lang are strings (title and lang may be missing). Every
    other shape is a reject with its own reason, never a crash and never a silent conversion.
    """

    def __init__(self, *, default_lang: str, max_text_chars: int, find_duplicates: bool = True):
        self.default_lang = default_lang
        self.max_text_chars = max_text_chars
        # every id seen, for one-process readers of small corpora; the indexing job finds duplicates
        # across the cluster instead (xdr.ingest.validation), and turns this off
        self._first_seen: dict[str, str] | None = {} if find_duplicates else None

    def _passage_id(self, fields: dict) -> tuple[str | None, str | None]:
        key = next((k for k in _ID_KEYS if fields.get(k) not in (None, "")), None)
        if key is None:
            return None, reject_reason("missing id")
        value = fields[key]
        if isinstance(value, bool) or not isinstance(value, str | int | bytes):
            return None, reject_reason("id is not a string or integer", f"got {_type_name(value)}")
        if isinstance(value, int):
            return str(value), None
        pid, reason = _text_value(fields, key, required=True)
        if reason or pid is None:
            return None, reason
        pid = pid.strip()
        return (pid, None) if pid else (None, reject_reason("missing id"))

    def check(self, row: RawRow) -> tuple[dict | None, str | None]:
        """(passage, None) for a valid row, (None, reason) for a reject."""
        if row.error:
            return None, row.error
        fields = row.fields
        assert fields is not None  # a row without an error has its fields
        pid, reason = self._passage_id(fields)
        if reason or pid is None:
            return None, reason
        text, reason = _text_value(fields, "text", required=True)
        if reason or text is None:
            return None, reason
        if not text.strip():
            return None, reject_reason("empty text")
        if len(text) > self.max_text_chars:
            return None, reject_reason("text too long", f"{len(text):,} characters > corpus.max_text_chars "
                                       f"{self.max_text_chars:,}")
        title, reason = _text_value(fields, "title", required=False)
        lang_key = "lang" if fields.get("lang") is not None else "language"
        lang, lang_reason = _text_value(fields, lang_key, required=False)
        if reason or lang_reason:
            return None, reason or lang_reason
        if self._first_seen is not None:
            where = f"{row.source}:{row.line}"
            first = self._first_seen.setdefault(pid, where)
            if first != where:
                return None, duplicate_reason(first)
        return {"id": pid, "title": title or "", "text": text, "lang": lang or self.default_lang}, None
