"""Sharded IVF(-PQ) FAISS index over a run's embeddings: train on a sample, add parts in parallel,
merge into S serving shards.

Every passage gets an int64 id: its row number in the run (embedding parts in order). Each serving shard
is one FAISS file, a Parquet table mapping its int64 ids to passage ids, and the same ids (with title and
text when `with_text`) in an uncompressed Arrow IPC file of uniform batches, which a searcher
memory-maps and reads only at its hits. Work is split so that no step holds the corpus: training holds
the sample, adding holds one part, merging holds one serving shard's index plus one partial index and
one part's docs (streamed to the shard's files).
"""

from __future__ import annotations

import contextlib
import math
import re

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xdr.io.layout import IndexLayout, RunLayout
from xdr.io.storage import FileRecord, Storage

MIN_POINTS_PER_CENTROID = 39  # below this FAISS k-means warns and centroids are poor
PQ_TRAIN_POINTS = 256 * MIN_POINTS_PER_CENTROID  # 8-bit PQ codebooks want this many training points


def default_factory(n_vectors: int, dim: int) -> str:
    """IVF with about 4*sqrt(N) lists (a power of two, >= 39 points per list), PQ with 8-bit codes and
    about dim/12 sub-quantizers (PQ64 for 768-d, docs/METHOD.md). Corpora too small to train 8-bit PQ
    keep full vectors in the lists (IVF*,Flat) so the sharding machinery stays the same."""
    nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n_vectors)))))
    while nlist > 1 and n_vectors / nlist < MIN_POINTS_PER_CENTROID:
        nlist //= 2
    if n_vectors < PQ_TRAIN_POINTS:
        return f"IVF{nlist},Flat"
    m = max(d for d in range(1, max(1, dim // 12) + 1) if dim % d == 0)
    return f"IVF{nlist},PQ{m}np"


def nlist_of(factory: str) -> int:
    """Number of inverted lists a factory string asks for (`IVF<n>`); 1 for an index without lists (Flat)."""
    found = re.search(r"IVF(\d+)", factory)
    return int(found.group(1)) if found else 1


def train_sample_size(total: int, factory: str, configured: int | None = None) -> int:
    """Vectors the index is trained on: `configured`, else 64 per list and at least what 8-bit PQ codebooks
    want; never more than the corpus. The build job and the tuning grid both train on this many."""
    return min(total, configured or max(64 * nlist_of(factory), PQ_TRAIN_POINTS))


def vectors_of(table: pa.Table) -> np.ndarray:
    """The `embedding` column of an embeddings table as float32 [N, dim]."""
    column = table["embedding"].combine_chunks()
    dim = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


def faiss_gpus() -> int:
    """GPUs this process's faiss can use: 0 with a faiss-cpu build, or when no GPU is visible to it (a Ray
    task that asked for none sees none)."""
    return faiss.get_num_gpus()  # faiss-cpu has it too and answers 0


def train_index(factory: str, sample: np.ndarray, *, seed: int = 0, use_gpu: bool = False) -> faiss.Index:
    """An empty, trained index for inner-product search. With `use_gpu` and a faiss that has GPUs, k-means'
    nearest-centroid searches (nearly all of its time) run on every visible GPU; otherwise on the CPU."""
    index = faiss.index_factory(sample.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed  # deterministic k-means
    if use_gpu and faiss_gpus() > 0:
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(sample.shape[1]))
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def quantizer_fit(index: faiss.Index, sample: np.ndarray) -> dict[str, float]:
    """How well a trained IVF index's coarse quantizer fits `sample`: the mean squared distance from a vector
    to the centroid of its list, and the imbalance of the lists the vectors fall in (FAISS's imbalance factor,
    n * sum(size^2) / (sum size)^2: 1 when even). A refresh compares these with the training sample's."""
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if isinstance(index, faiss.IndexPreTransform):  # e.g. OPQ: the lists hold transformed vectors
        chain = index.chain  # a SWIG vector (the type stubs call it a list)
        for step in range(chain.size()):  # type: ignore[attr-defined]
            x = chain.at(step).apply(x)  # type: ignore[attr-defined]
    ivf = faiss.extract_index_ivf(index)
    _, lists = ivf.quantizer.search(x, 1)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    residual = float(((x - centroids[lists[:, 0]]) ** 2).sum(axis=1).mean())
    sizes = np.bincount(lists[:, 0], minlength=ivf.nlist).astype(np.float64)
    return {"mean_residual": residual, "imbalance": float(ivf.nlist * (sizes ** 2).sum() / sizes.sum() ** 2)}


def add_assigned(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, assigner: faiss.Index) -> None:
    """index.add_with_ids, with each vector's inverted list found by `assigner`, a copy of the index's coarse
    quantizer (on the GPUs: the assignment is the costly part of adding, nlist dot products a vector)."""
    _, lists = assigner.search(vectors, 1)
    index.add_core(len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(ids),  # type: ignore[attr-defined]
                   faiss.swig_ptr(lists.ravel()))  # add_core: an IndexIVF method


def to_bytes(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def from_bytes(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    faiss.extract_index_ivf(index).nprobe = nprobe


def part_offsets(rows_per_part: list[int]) -> list[int]:
    """int64 id of each part's first passage: the running row count."""
    return [int(x) for x in np.concatenate([[0], np.cumsum(rows_per_part)[:-1]])] if rows_per_part else []


def sample_rows(rows_per_part: list[int], sample_size: int, seed: int) -> list[np.ndarray]:
    """A uniform sample without replacement over all rows, as sorted row indices per part."""
    total = sum(rows_per_part)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(sample_size, total), replace=False))
    offsets = part_offsets(rows_per_part) + [total]
    return [chosen[(chosen >= offsets[p]) & (chosen < offsets[p + 1])] - offsets[p] for p in range(len(rows_per_part))]


def read_sample(storage: Storage, run_uri: str, rows_per_part: list[int], sample_size: int, seed: int) -> np.ndarray:
    """Read only the sampled rows' vectors, one part at a time."""
    layout = RunLayout(run_uri)
    pieces = []
    for part, rows in enumerate(sample_rows(rows_per_part, sample_size, seed)):
        if len(rows):
            table = storage.read_table(layout.part("embeddings", part), columns=["embedding"])
            pieces.append(vectors_of(table.take(pa.array(rows))))
    return np.concatenate(pieces)


def add_part(storage: Storage, run_uri: str, index_root: str, part: int, id_offset: int,
             use_gpu: bool = False) -> FileRecord:
    """Add one embeddings part to a copy of the trained index; write it as a partial index. With `use_gpu`
    and a faiss that has GPUs, the vectors' lists are found on the GPUs (an index whose vectors are
    transformed first, e.g. OPQ, adds on the CPU)."""
    layout = IndexLayout(index_root)
    out = layout.partial(part)
    if storage.exists(out):
        return storage.record(out)
    index = from_bytes(storage.read_bytes(layout.trained))
    table = storage.read_table(RunLayout(run_uri).part("embeddings", part), columns=["embedding"])
    vectors = vectors_of(table)
    ids = np.arange(id_offset, id_offset + len(vectors), dtype=np.int64)
    if use_gpu and faiss_gpus() > 0 and isinstance(index, faiss.IndexIVF):
        add_assigned(index, vectors, ids, faiss.index_cpu_to_all_gpus(index.quantizer))
    else:
        index.add_with_ids(vectors, ids)
    return storage.write_bytes(out, to_bytes(index))


def shard_plan(rows_per_part: list[int], n_shards: int) -> list[list[int]]:
    """Contiguous runs of parts per serving shard, even in rows; never an empty shard. A part goes to the
    shard its first row falls in, so parts without rows (a part of trailing rejects) join a neighbour."""
    total = sum(rows_per_part)
    if total == 0:
        return [list(range(len(rows_per_part)))]
    n_shards = max(1, min(n_shards, sum(1 for r in rows_per_part if r)))
    starts = np.cumsum([0, *rows_per_part[:-1]])
    shard_of = [min(n_shards - 1, int(start) * n_shards // total) for start in starts]
    plan = [[p for p, s in enumerate(shard_of) if s == shard] for shard in range(n_shards)]
    return [parts for parts in plan if sum(rows_per_part[p] for p in parts)]


DOCS = pa.schema([("faiss_id", pa.int64()), ("id", pa.string())])
LOOKUP_BATCH_ROWS = 4096  # every batch of a lookup file but the last: row r is in batch r // 4096


def lookup_schema(with_text: bool) -> pa.Schema:
    text = [("title", pa.string()), ("text", pa.string())] if with_text else []
    return pa.schema([("id", pa.string()), *text])


class UniformBatchWriter:
    """Writes tables to an Arrow IPC file in batches of exactly `rows` rows (the last may be shorter), so
    that a reader finds row r in batch r // rows without reading any batch's metadata first."""

    def __init__(self, writer, rows: int = LOOKUP_BATCH_ROWS):
        self.writer, self.rows = writer, rows
        self.pending: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        buffered = pa.concat_tables(self.pending)
        full = buffered.num_rows // self.rows * self.rows
        for start in range(0, full, self.rows):
            self.writer.write_batch(buffered.slice(start, self.rows).combine_chunks().to_batches()[0])
        self.pending = [buffered.slice(full)] if full < buffered.num_rows else []

    def close(self) -> None:
        if self.pending:
            rest = pa.concat_tables(self.pending).combine_chunks()
            if rest.num_rows:
                self.writer.write_batch(rest.to_batches()[0])


def merge_shard(storage: Storage, run_uri: str, index_root: str, shard: int, parts: list[int],
                offsets: list[int], with_text: bool) -> dict:
    """Merge the partial indexes of `parts` into serving shard `shard`; stream its docs (and text) files
    part by part, so memory holds the shard's index and one part's passages, never the shard's text."""
    layout, run = IndexLayout(index_root), RunLayout(run_uri)
    out = layout.shard(shard)
    side_files = [layout.shard_docs(shard), layout.shard_lookup(shard)]
    if storage.exists(out):  # committed by an earlier attempt
        records = [storage.record(u) for u in side_files] + [storage.record(out)]
        vectors = storage.parquet_rows(layout.shard_docs(shard))
    else:
        merged = from_bytes(storage.read_bytes(layout.trained))
        schema = lookup_schema(with_text)
        with contextlib.ExitStack() as stack:
            docs_file = stack.enter_context(storage.writer(layout.shard_docs(shard)))
            docs = stack.enter_context(pq.ParquetWriter(docs_file, DOCS, compression="zstd"))
            lookup_file = stack.enter_context(storage.writer(layout.shard_lookup(shard)))
            lookup = UniformBatchWriter(stack.enter_context(pa.ipc.new_file(lookup_file, schema)))
            for part in parts:
                partial = from_bytes(storage.read_bytes(layout.partial(part)))
                faiss.extract_index_ivf(merged).merge_from(faiss.extract_index_ivf(partial), 0)
                del partial
                passages = storage.read_table(run.part("passages", part), columns=schema.names)
                faiss_ids = np.arange(offsets[part], offsets[part] + passages.num_rows, dtype=np.int64)
                docs.write_table(pa.table({"faiss_id": faiss_ids, "id": passages["id"]}, schema=DOCS))
                lookup.write(passages.cast(schema))
            lookup.close()
        records = [docs_file.record, lookup_file.record]
        records.append(storage.write_bytes(out, to_bytes(merged)))  # the index last: it marks the shard done
        vectors = merged.ntotal
    return {"shard": shard, "parts": parts, "vectors": int(vectors), "first_id": offsets[parts[0]] if parts else 0,
            "files": [vars(r) for r in records]}
