"""Validating a corpus in parallel tasks, so that no process reads it all or holds every id.

1. `plan_units`: the corpus in units, in corpus order: a file; a byte range of a large uncompressed
   TSV / JSON lines file (the lines that start in it); the row groups that start in a byte range of a
   large Parquet file. Gzip files cannot be entered in the middle: they are one unit each.
2. `validate_unit` (a task per unit): reads and checks every row, stages the unit's rows (passages and
   rejects, in order) under `_staging/`, and its ids in one file with a row group per hash partition.
3. `find_duplicates` (a task per partition): reads its row group of every unit's ids file; the first
   occurrence of an id in corpus order wins, every other one is a reject naming where the first was.
   Memory: the ids of one partition. The duplicates go to a file with a row group per unit.
4. `cut_unit` (a task per unit): knowing how many valid passages come before the unit, it writes the
   parts that lie wholly inside it, and its share of the parts it shares with a neighbour as fragments,
   which `assemble_part` joins. Parts are cut exactly as a single reader cuts them: valid passages in
   corpus order, `passages_per_part` a part; a reject goes to the part that is open when it is read.
5. The outcome is committed once, to `validation.json`: a rerun reads it and never validates again,
   and refuses a corpus whose files changed since.

`validate_corpus` runs the steps through an executor (xdr.executor): `LocalExecutor` in one process, or Ray tasks
(ray_jobs/tasks.py) with the same functions. Data passes between steps through the staging files, never
through the driver or Ray's object store (Ray keeps small task results in the driver's memory): the
driver holds counts, a few per unit and partition.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xdr.config import CorpusConfig
from xdr.executor import Executor, LocalExecutor
from xdr.ingest.corpus import PassageValidator, ReadCount, detect_format, duplicate_reason, iter_raw_rows, reason_kind
from xdr.io import schemas
from xdr.io.layout import RunLayout
from xdr.io.partitioned import (
    BATCH_ROWS,
    STAGING_OPTIONS,
    iter_batches,
    partition_of,
    read_group,
    write_partitioned,
    write_row_groups,
)
from xdr.io.storage import FileRecord, Storage
from xdr.uris import join

log = logging.getLogger("xdr.ingest.validation")

# A unit's rows as staged: the passage fields (and digest) of valid rows, the reason of rejects, the excerpt of
# both (a valid row can still turn out to be a duplicate). `line` counts from the unit's first line.
STAGED = pa.schema([("line", pa.int64()), ("id", pa.string()), ("title", pa.string()), ("text", pa.string()),
                    ("lang", pa.string()), ("digest", pa.binary(16)), ("reason", pa.string()),
                    ("excerpt", pa.string())])
IDS = pa.schema([("id", pa.string()), ("order", pa.int64()), ("line", pa.int64())])
DUPLICATES = pa.schema([("row", pa.int64()), ("reason", pa.string())])
_ROW_BITS = 32  # order = unit << 32 | row: corpus order as one integer


@dataclass(frozen=True)
class InputUnit:
    """A piece of the corpus one task validates: a whole file (end None) or a byte range of it."""

    index: int
    uri: str
    fmt: str
    start: int = 0
    end: int | None = None


@dataclass
class UnitResult:
    """What validating a unit found (small: counts only)."""

    unit: int
    lines: int
    rows_read: int
    valid: int
    reject_reasons: dict[str, int]
    partition_rows: list[int]  # its valid ids in each hash partition


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
    resumed: bool = False  # read from validation.json: this run validated nothing

    @property
    def reject_fraction(self) -> float:
        return self.rejects / self.rows_read if self.rows_read else 0.0


# --- 1. units -------------------------------------------------------------------------------------
def plan_units(storage: Storage, config: CorpusConfig) -> tuple[list[InputUnit], list[dict]]:
    """The corpus's units in corpus order, and its files' sizes and times (the corpus fingerprint)."""
    files = storage.expand(config.path)
    if not files:
        raise ValueError(f"corpus.path {config.path!r} names no files")
    infos = storage.file_infos(files)
    units: list[InputUnit] = []
    for info in infos:
        uri, size = info["uri"], info["bytes"]
        fmt = detect_format(uri, config.format)
        if uri.lower().endswith(".gz") or size <= config.split_bytes:
            units.append(InputUnit(len(units), uri, fmt))
            continue
        for start in range(0, size, config.split_bytes):
            units.append(InputUnit(len(units), uri, fmt, start, min(size, start + config.split_bytes)))
    return units, infos


def _estimated_bytes(unit: InputUnit, infos: list[dict]) -> int:
    """Uncompressed bytes a unit's task reads (gzip counted at a typical 3:1)."""
    if unit.end is not None:
        return unit.end - unit.start
    size = next(i["bytes"] for i in infos if i["uri"] == unit.uri)
    return 3 * size if unit.uri.lower().endswith(".gz") else size


def partitions_for(infos: list[dict], split_bytes: int) -> int:
    """Hash partitions for finding duplicates: one per `split_bytes` of input, so a partition holds about
    the ids of one unit."""
    return max(1, min(4096, math.ceil(sum(i["bytes"] for i in infos) / split_bytes)))


# --- 2. validate a unit ---------------------------------------------------------------------------
def _staging(run_uri: str) -> str:
    return join(run_uri, "_staging")


def staged_uri(run_uri: str, unit: int) -> str:
    return join(_staging(run_uri), f"unit-{unit:06d}.parquet")


def ids_uri(run_uri: str, unit: int) -> str:
    return join(_staging(run_uri), "ids", f"unit-{unit:06d}.parquet")


def duplicates_uri(run_uri: str, partition: int) -> str:
    return join(_staging(run_uri), "duplicates", f"partition-{partition:05d}.parquet")


def fragment_uri(run_uri: str, part: int, unit: int, stage: str) -> str:
    return join(_staging(run_uri), "fragments", f"part-{part:05d}", f"{stage}-{unit:06d}.parquet")


def _staged_rows(storage: Storage, config: CorpusConfig, unit: InputUnit, count: ReadCount) -> Iterator[dict]:
    validator = PassageValidator(default_lang=config.default_lang, max_text_chars=config.max_text_chars,
                                 find_duplicates=False)
    for row in iter_raw_rows(storage, unit.uri, unit.fmt, max_line_bytes=config.max_line_bytes, start=unit.start,
                             end=unit.end, count=count):
        passage, reason = validator.check(row)
        if passage is not None:  # digested here, where the row is at hand (xdr.pipeline.reuse reads it)
            passage["digest"] = schemas.passage_digest(passage["title"], passage["text"])
        yield {"line": row.line, **(passage or {}), "reason": reason, "excerpt": row.excerpt}


def validate_unit(storage: Storage, config: CorpusConfig, run_uri: str, unit: InputUnit,
                  partitions: int) -> UnitResult:
    """Read and check a unit's rows; stage them, and its ids by hash partition (a row group each).
    Memory: a batch of rows, and the unit's ids in Arrow arrays (about 30 bytes an id)."""
    count = ReadCount()
    reasons: Counter = Counter()
    id_tables: list[pa.Table] = []
    id_partitions: list[np.ndarray] = []
    rows_read = 0
    with storage.writer(staged_uri(run_uri, unit.index)) as out, pq.ParquetWriter(out, STAGED,
                                                                                   **STAGING_OPTIONS) as staged:
        batch: list[dict] = []

        def flush() -> None:
            nonlocal rows_read
            table = pa.Table.from_pylist(batch, schema=STAGED)
            staged.write_table(table)
            valid = pc.is_null(table["reason"])
            rows = np.arange(rows_read, rows_read + table.num_rows, dtype=np.int64)
            order = (np.int64(unit.index) << _ROW_BITS) + rows[valid.to_numpy(zero_copy_only=False)]
            kept = table.filter(valid)
            id_tables.append(pa.table({"id": kept["id"], "order": order, "line": kept["line"]}, schema=IDS))
            id_partitions.append(partition_of(kept["id"].to_pylist(), partitions))
            rows_read += table.num_rows
            batch.clear()

        for row in _staged_rows(storage, config, unit, count):
            if row["reason"] is not None:
                reasons[reason_kind(row["reason"])] += 1
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                flush()
        flush()
    table = pa.concat_tables(id_tables).combine_chunks()
    sizes = write_partitioned(storage, ids_uri(run_uri, unit.index), table, np.concatenate(id_partitions),
                              partitions, IDS)
    return UnitResult(unit.index, count.lines, rows_read, table.num_rows, dict(reasons), sizes)


# --- 3. duplicates --------------------------------------------------------------------------------
def find_duplicates(storage: Storage, run_uri: str, partition: int, sources: list[str], line_offsets: list[int],
                    partition_rows: list[list[int]]) -> list[int]:
    """One partition's ids from every unit -> duplicates per unit, written with a row group per unit:
    every occurrence of an id after its first in corpus order, with the reason naming the first."""
    units = len(sources)
    tables = [read_group(storage, ids_uri(run_uri, u), partition_rows[u], partition)
              for u in range(units) if partition_rows[u][partition]]
    table = (pa.concat_tables(tables) if tables else IDS.empty_table()).sort_by(
        [("id", "ascending"), ("order", "ascending")])
    n = table.num_rows
    found: list[tuple[int, int, str]] = []  # (unit, row, reason)
    if n > 1:
        ids = table["id"].combine_chunks()
        repeat = np.concatenate([[False], pc.equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)])
        first = np.maximum.accumulate(np.where(repeat, 0, np.arange(n)))  # each row's first occurrence
        order, line = table["order"].to_numpy(), table["line"].to_numpy()
        for i in np.flatnonzero(repeat):
            first_unit = int(order[first[i]] >> _ROW_BITS)
            where = f"{sources[first_unit]}:{line_offsets[first_unit] + int(line[first[i]])}"
            found.append((int(order[i] >> _ROW_BITS), int(order[i] & ((1 << _ROW_BITS) - 1)), duplicate_reason(where)))
    found.sort()
    counts = np.bincount([u for u, _, _ in found], minlength=units).astype(int)
    if found:
        dups = pa.table({"row": pa.array([r for _, r, _ in found], pa.int64()),
                         "reason": pa.array([m for _, _, m in found], pa.string())}, schema=DUPLICATES)
        write_row_groups(storage, duplicates_uri(run_uri, partition), dups, counts, DUPLICATES)
    return counts.tolist()


# --- 4. cut parts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnitCut:
    """Where a unit's rows land: valid passages before it, its first line number, its parts."""

    unit: InputUnit
    valid_before: int
    line_offset: int
    first_part: int
    last_part: int
    shared_parts: frozenset[int]


def _part_tables(rows: pa.Table, source: str, line_offset: int) -> tuple[pa.Table, pa.Table]:
    """Staged rows (duplicates already marked) -> the passages and rejects tables they make."""
    valid = pc.is_null(rows["reason"])
    passages = rows.filter(valid).select(schemas.PASSAGES.names).cast(schemas.PASSAGES)
    bad = rows.filter(pc.invert(valid))
    rejects = pa.table({"source": pa.array([source] * bad.num_rows, pa.string()),
                        "line": pc.add(bad["line"], line_offset), "reason": bad["reason"],
                        "excerpt": bad["excerpt"]}, schema=schemas.REJECTS)
    return passages, rejects


def _write_part(storage: Storage, run_uri: str, part: int, passages: pa.Table, rejects: pa.Table) -> PartInfo:
    layout = RunLayout(run_uri)
    files = [storage.write_table(layout.part("rejects", part), rejects.combine_chunks()),
             storage.write_table(layout.part("passages", part), passages.combine_chunks())]
    return PartInfo(part, passages.num_rows, rejects.num_rows, files)


def cut_unit(storage: Storage, config: CorpusConfig, run_uri: str, cut: UnitCut,
             duplicates_in: dict[int, list[int]]) -> list[PartInfo]:
    """Write the parts wholly inside the unit; stage its share of shared parts as fragments (written for
    every shared part in its range, empty or not, so that assembling needs no listing). `duplicates_in`:
    the partitions that found duplicates in this unit, each with its counts per unit."""
    duplicates = pa.concat_tables([DUPLICATES.empty_table()] + [
        read_group(storage, duplicates_uri(run_uri, p), counts, cut.unit.index)
        for p, counts in duplicates_in.items()])
    dup_reason = dict(zip(duplicates["row"].to_pylist(), duplicates["reason"].to_pylist()))
    dup_rows = np.array(sorted(dup_reason), dtype=np.int64)
    ppp = config.passages_per_part
    pieces: dict[int, list[tuple[pa.Table, pa.Table]]] = {}
    written: list[PartInfo] = []
    closed: set[int] = set()
    valid_before, row0 = cut.valid_before, 0

    def close(part: int) -> None:
        closed.add(part)
        passages = pa.concat_tables([p for p, _ in pieces[part]])
        rejects = pa.concat_tables([r for _, r in pieces.pop(part)])
        if part in cut.shared_parts:
            storage.write_table(fragment_uri(run_uri, part, cut.unit.index, "passages"), passages.combine_chunks())
            storage.write_table(fragment_uri(run_uri, part, cut.unit.index, "rejects"), rejects.combine_chunks())
        elif passages.num_rows or rejects.num_rows:
            written.append(_write_part(storage, run_uri, part, passages, rejects))

    for batch in iter_batches(storage, staged_uri(run_uri, cut.unit.index)):
        rows = pa.Table.from_batches([batch])
        # this batch's duplicate rows: a slice of the sorted row numbers, not a lookup per row
        hits = dup_rows[np.searchsorted(dup_rows, row0):np.searchsorted(dup_rows, row0 + rows.num_rows)]
        if len(hits):
            reasons = rows["reason"].to_pylist()
            for row in hits.tolist():
                reasons[row - row0] = dup_reason[row]
            rows = rows.set_column(rows.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
        valid = pc.is_null(rows["reason"]).to_numpy(zero_copy_only=False)
        before = valid_before + np.cumsum(valid) - valid  # valid passages before each row
        part_of_row = before // ppp
        valid_before += int(valid.sum())
        row0 += rows.num_rows
        for part in np.unique(part_of_row):
            chosen = rows.filter(pa.array(part_of_row == part))
            for open_part in [p for p in pieces if p < part]:
                close(open_part)
            pieces.setdefault(int(part), []).append(_part_tables(chosen, cut.unit.uri, cut.line_offset))
    for part in range(cut.first_part, cut.last_part + 1):
        if part in cut.shared_parts and part not in pieces and part not in closed:
            pieces[part] = [_part_tables(pa.Table.from_pylist([], schema=STAGED), cut.unit.uri, 0)]
    for part in sorted(pieces):
        close(part)
    return written


def assemble_part(storage: Storage, run_uri: str, part: int, units: list[int]) -> PartInfo | None:
    """Join a shared part's fragments (units in corpus order) into the part's files; None if empty."""
    passages = pa.concat_tables([storage.read_table(fragment_uri(run_uri, part, u, "passages")) for u in units])
    rejects = pa.concat_tables([storage.read_table(fragment_uri(run_uri, part, u, "rejects")) for u in units])
    if not passages.num_rows and not rejects.num_rows:
        return None
    return _write_part(storage, run_uri, part, passages, rejects)


def line_offsets(units: list[InputUnit], results: list[UnitResult]) -> list[int]:
    """The line number before each unit's first line: the lines of the earlier ranges of its file."""
    offsets: list[int] = []
    seen: Counter[str] = Counter()
    for unit, result in zip(units, results):
        offsets.append(seen[unit.uri])
        seen[unit.uri] += result.lines
    return offsets


def plan_cuts(units: list[InputUnit], results: list[UnitResult], duplicates: np.ndarray,
              passages_per_part: int) -> list[UnitCut]:
    """Each unit's place in the cut. A unit may touch parts first..last, where `last` counts rejects that
    may follow its last passage; a part two units may touch is shared, and assembled from fragments."""
    spans, valid_before = [], 0
    for unit, result, dups, first_line in zip(units, results, duplicates, line_offsets(units, results)):
        valid = result.valid - int(dups)
        spans.append((unit, valid_before, first_line, valid_before // passages_per_part,
                      (valid_before + valid) // passages_per_part))
        valid_before += valid
    touching = Counter(p for *_, first, last in spans for p in range(first, last + 1))
    return [UnitCut(unit, before, line0, first, last,
                    frozenset(p for p in range(first, last + 1) if touching[p] > 1))
            for unit, before, line0, first, last in spans]


# --- 5. the whole validation, through an executor -------------------------------------------------
def _fingerprint(infos: list[dict]) -> list[dict]:
    return [{"uri": i["uri"], "bytes": i["bytes"], "mtime_ns": i["mtime_ns"]} for i in infos]


def _check_unchanged(storage: Storage, config: CorpusConfig, committed: dict) -> None:
    now = {i["uri"]: i for i in _fingerprint(storage.file_infos(storage.expand(config.path)))}
    before = {i["uri"]: i for i in committed["files"]}
    changes = ([f"{u} added" for u in sorted(now.keys() - before.keys())]
               + [f"{u} removed" for u in sorted(before.keys() - now.keys())]
               + [f"{u} changed ({before[u]['bytes']:,} -> {now[u]['bytes']:,} bytes)" for u in sorted(now)
                  if u in before and now[u] != before[u]])
    if changes:
        raise ValueError(f"the corpus changed since this run validated it: {'; '.join(changes[:5])}"
                         f"{f' (and {len(changes) - 5} more)' if len(changes) > 5 else ''}. Resume it with the "
                         "same corpus, or choose a new output folder.")


def _summary_from(committed: dict) -> PrepareSummary:
    return PrepareSummary(
        rows_read=committed["rows_read"], passages=committed["passages"], rejects=committed["rejects"],
        reject_reasons=Counter(committed["reject_reasons"]), source_files=[f["uri"] for f in committed["files"]],
        parts=[PartInfo(p["part"], p["passages"], p["rejects"], [FileRecord(**f) for f in p["files"]])
               for p in committed["parts"]], resumed=True)


def _check_fractions(summary: PrepareSummary, config: CorpusConfig, run_uri: str) -> None:
    rejects_folder = RunLayout(run_uri).folder("rejects")
    if summary.passages == 0:
        raise ValueError(f"no valid passage in {config.path!r} ({summary.rejects} rows rejected: "
                         f"{dict(summary.reject_reasons)}); see {rejects_folder}")
    if summary.reject_fraction > config.max_reject_fraction:
        raise ValueError(
            f"{summary.rejects} of {summary.rows_read} rows rejected ({summary.reject_fraction:.2%} > "
            f"corpus.max_reject_fraction {config.max_reject_fraction:.2%}): {dict(summary.reject_reasons)}. "
            f"The rows and reasons are in {rejects_folder}; fix the corpus or raise the limit.")


def validate_corpus(storage: Storage, config: CorpusConfig, run_uri: str, executor: Executor | None = None,
                    progress: Callable[[str], None] | None = None) -> PrepareSummary:
    """Validate the corpus into passages/ and rejects/ parts, or read what an earlier run committed.

    Raises ValueError when nothing is valid, the reject fraction exceeds `config.max_reject_fraction`,
    or the corpus changed since an earlier attempt of this run committed its validation.
    """
    executor = executor or LocalExecutor()
    say = progress or log.info
    layout = RunLayout(run_uri)
    if storage.exists(layout.validation):
        committed = json.loads(storage.read_bytes(layout.validation))
        _check_unchanged(storage, config, committed)
        summary = _summary_from(committed)
        say(f"validation committed by an earlier attempt: {len(summary.parts)} parts, {summary.passages:,} "
            "passages; the corpus is not read again")
        _check_fractions(summary, config, run_uri)
        return summary

    storage.remove_tree(_staging(run_uri))  # whatever a killed attempt staged
    units, infos = plan_units(storage, config)
    partitions = partitions_for(infos, config.split_bytes)
    say(f"validating {len(infos)} files in {len(units)} units, duplicates in {partitions} partitions")
    # largest first, so that a big unit (a whole gzip file) does not start last and run alone at the end
    order = sorted(units, key=lambda u: -_estimated_bytes(u, infos))
    mapped = [executor.submit(validate_unit, storage, config, run_uri, u, partitions) for u in order]
    results: list[UnitResult] = [None] * len(units)  # type: ignore[list-item]
    rows = 0
    for done, (i, result) in enumerate(executor.as_completed(mapped), start=1):
        results[order[i].index] = result
        rows += result.rows_read
        if done == len(units) or done % max(1, len(units) // 20) == 0:
            say(f"validated {done}/{len(units)} units, {rows:,} rows")

    sources, first_lines = [u.uri for u in units], line_offsets(units, results)
    partition_rows = [r.partition_rows for r in results]
    found = executor.get([executor.submit(find_duplicates, storage, run_uri, p, sources, first_lines, partition_rows)
                          for p in range(partitions)])
    duplicates = np.sum(found, axis=0)
    cuts = plan_cuts(units, results, duplicates, config.passages_per_part)
    cut_parts = [executor.submit(cut_unit, storage, config, run_uri, cut,
                                 {p: counts for p, counts in enumerate(found) if counts[cut.unit.index]})
                 for cut in cuts]
    parts: list[PartInfo] = [p for written in executor.get(cut_parts) for p in written]
    shared = sorted({p for cut in cuts for p in cut.shared_parts})
    assembled = [executor.submit(assemble_part, storage, run_uri, part,
                                 [c.unit.index for c in cuts if part in c.shared_parts]) for part in shared]
    parts += [p for p in executor.get(assembled) if p is not None]
    parts.sort(key=lambda p: p.part)

    reasons: Counter[str] = Counter()
    for result in results:
        reasons.update(result.reject_reasons)
    reasons["duplicate id"] += int(duplicates.sum())
    summary = PrepareSummary(rows_read=sum(r.rows_read for r in results), passages=sum(p.passages for p in parts),
                             rejects=sum(reasons.values()), reject_reasons=+reasons, parts=parts,
                             source_files=[i["uri"] for i in infos])
    if [p.part for p in parts] != list(range(len(parts))) or summary.rejects != sum(p.rejects for p in parts):
        raise RuntimeError(f"validation cut parts {[p.part for p in parts][:10]}... with "
                           f"{sum(p.rejects for p in parts)} rejects, expected 0..{len(parts) - 1} and "
                           f"{summary.rejects}")
    _check_fractions(summary, config, run_uri)
    committed = {"files": _fingerprint(infos), "units": len(units), "partitions": partitions,
                 "rows_read": summary.rows_read, "passages": summary.passages, "rejects": summary.rejects,
                 "reject_reasons": dict(summary.reject_reasons),
                 "parts": [{**asdict(p), "files": [vars(f) for f in p.files]} for p in parts]}
    storage.write_bytes(layout.validation, json.dumps(committed, indent=1).encode())
    storage.remove_tree(_staging(run_uri))
    return summary
