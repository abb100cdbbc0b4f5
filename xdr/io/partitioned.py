"""Files cut by hash partition, the way xdr finds what matches across a corpus without one process
holding every id: a map step writes its rows sorted by partition, one Parquet row group per non-empty
partition, and returns the row counts; the step for partition p reads row group p of every map file.
Validation finds duplicate ids this way, and a reuse run matches passages with an earlier run's.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xdr.io.storage import Storage

BATCH_ROWS = 8192
# staged files are read once and deleted: compression, dictionaries and statistics cost more than they save
STAGING_OPTIONS = {"compression": "none", "use_dictionary": False, "write_statistics": False}


def partition_of(ids: Sequence[str], partitions: int) -> np.ndarray:
    """Each id's hash partition. crc32: the same in every process (Python's hash() is salted per process)."""
    return np.fromiter((zlib.crc32(i.encode()) for i in ids), dtype=np.int64, count=len(ids)) % partitions


def write_partitioned(storage: Storage, uri: str, table: pa.Table, partition: np.ndarray, partitions: int,
                      schema: pa.Schema) -> list[int]:
    """Write `table`'s rows grouped by `partition` (stable within a group); returns the rows per partition."""
    sizes = np.bincount(partition, minlength=partitions)
    write_row_groups(storage, uri, table.take(pa.array(np.argsort(partition, kind="stable"))), sizes, schema)
    return [int(s) for s in sizes]


def write_row_groups(storage: Storage, uri: str, table: pa.Table, sizes: Sequence[int] | np.ndarray,
                     schema: pa.Schema) -> None:
    """`table` (sorted by group) with one row group per non-empty group, in order: a reader of group g
    reads row group (number of non-empty groups before g)."""
    with storage.writer(uri) as out, pq.ParquetWriter(out, schema, **STAGING_OPTIONS) as writer:
        start = 0
        for size in sizes:
            if size:
                writer.write_table(table.slice(start, int(size)), row_group_size=int(size))
                start += int(size)


def read_group(storage: Storage, uri: str, sizes: Sequence[int], group: int) -> pa.Table:
    fs, path = storage.filesystem(uri)
    row_group = sum(1 for s in sizes[:group] if s)
    return pq.ParquetFile(fs.open_input_file(path)).read_row_group(row_group)


def read_groups(storage: Storage, uris: Sequence[str], sizes: Sequence[Sequence[int]], group: int,
                schema: pa.Schema) -> pa.Table:
    """Group `group` of every file that has rows in it, as one table."""
    tables = [read_group(storage, uri, s, group) for uri, s in zip(uris, sizes) if s[group]]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def iter_batches(storage: Storage, uri: str, batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows in batches, one batch in memory: pyarrow's threaded reader reads ahead and
    kept hundreds of MB of a large file at once."""
    fs, path = storage.filesystem(uri)
    yield from pq.ParquetFile(fs.open_input_file(path), pre_buffer=False).iter_batches(batch_size=batch_size,
                                                                                        use_threads=False)
