"""Searching a sharded index: each shard answers its top-k, the caller merges them into a global top-k.

`ShardSearcher` is one serving shard (one Ray Serve replica holds one); `merge_topk` combines their
answers; `ShardedSearcher` does both in one process; `ExactSearcher` is brute-force inner product over
the same embeddings, for evaluation and recall measurements.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xdr.index.build import LOOKUP_BATCH_ROWS, set_nprobe, vectors_of
from xdr.io.layout import IndexLayout, RunLayout
from xdr.io.storage import Storage
from xdr.uris import is_s3


@dataclass
class Hits:
    """Per query, ranked: scores float32 [Q, k] and passage ids (None where fewer than k were found)."""

    scores: np.ndarray
    ids: list[list[str | None]]


def merge_topk(scores: list[np.ndarray], faiss_ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard results ([Q, k_s] each, -1 ids for missing) into a global top-k.

    Ties are broken by the smaller int64 id, so the result does not depend on shard order.
    """
    all_scores = np.concatenate(scores, axis=1)
    all_ids = np.concatenate(faiss_ids, axis=1)
    all_scores = np.where(all_ids < 0, -np.inf, all_scores)
    order = np.lexsort((all_ids, -all_scores), axis=1)[:, :k]
    return np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_ids, order, 1)


def _local_copy(storage: Storage, uri: str, sha256: str, cache_dir: str | None) -> str:
    """A local path for the file: itself if local, else a download cached under its checksum (so a rebuilt
    index at the same URI is never served from a stale copy), verified against the manifest."""
    if not is_s3(uri):
        return storage.filesystem(uri)[1]
    cache = Path(cache_dir or os.environ.get("XDR_CACHE") or Path.home() / ".cache" / "xdr")
    target = cache / sha256 / Path(uri).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.download-{os.getpid()}")
        digest = hashlib.sha256()
        with storage.open_input(uri) as source, open(tmp, "wb") as out:  # streamed: a shard's text can be GBs
            while chunk := source.read(8 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            tmp.unlink()
            raise ValueError(f"{uri} does not match the checksum in its index manifest; rebuild the index")
        tmp.replace(target)
    return str(target)


class ShardSearcher:
    """One serving shard: its FAISS index in memory; passage ids (and titles, texts) memory-mapped and read
    only at the hits. Memory: the index bytes, plus the pages of the lookup file that hits touched."""

    def __init__(self, index_root: str, shard: int, *, storage: Storage | None = None, cache_dir: str | None = None,
                 nprobe: int | None = None):
        self.storage = storage or Storage()
        layout = IndexLayout(index_root)
        self.manifest = json.loads(self.storage.read_bytes(layout.manifest))
        entry = next((s for s in self.manifest["shards"] if s["shard"] == shard), None)
        if entry is None:
            raise ValueError(f"{layout.manifest} has no shard {shard}")
        # by file name: the manifest's URIs are as the build wrote them (absolute, or another scheme), while
        # the caller may name the same folder relatively, through file://, or after moving it
        checksums = {f["uri"].rsplit("/", 1)[-1]: f["sha256"] for f in entry["files"]}

        def local(uri: str) -> str:
            return _local_copy(self.storage, uri, checksums[uri.rsplit("/", 1)[-1]], cache_dir)

        self.index = faiss.read_index(local(layout.shard(shard)))
        self.first_id = int(entry["first_id"]) if "first_id" in entry else int(  # indexes built before first_id
            pq.read_table(local(layout.shard_docs(shard)), columns=["faiss_id"])["faiss_id"][0].as_py())
        # ids (and texts) stay in the memory-mapped lookup file; a lookup reads the batches of its hits only
        self._lookup = pa.ipc.open_file(pa.memory_map(local(layout.shard_lookup(shard))))
        self.nprobe = nprobe or self.manifest["nprobe"]

    @property
    def size(self) -> int:
        return self.index.ntotal

    def search(self, query_emb: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """query_emb float32 [Q, d] -> (scores [Q, k], int64 ids [Q, k]; -1 where missing)."""
        set_nprobe(self.index, nprobe or self.nprobe)
        return self.index.search(np.ascontiguousarray(query_emb, dtype=np.float32), k)

    def lookup(self, faiss_ids: np.ndarray, columns: tuple[str, ...] = ("id",)) -> list[dict]:
        """Passage id (and title, text) of ids of this shard (its ids are contiguous from its first id)."""
        missing = [c for c in columns if c not in self._lookup.schema.names]
        if missing:
            raise ValueError(f"this index was built without text (with_text false); it cannot return {missing}")
        batches: dict[int, pa.RecordBatch] = {}
        out = []
        for row in (np.asarray(faiss_ids, dtype=np.int64) - self.first_id).tolist():
            number, offset = divmod(row, LOOKUP_BATCH_ROWS)
            if number not in batches:
                batches[number] = self._lookup.get_batch(number)
            batch = batches[number]
            out.append({c: batch.column(c)[offset].as_py() for c in columns})
        return out


class ShardedSearcher:
    """All shards in one process: search each, merge the top-k."""

    def __init__(self, index_root: str, *, storage: Storage | None = None, cache_dir: str | None = None):
        self.storage = storage or Storage()
        self.manifest = json.loads(self.storage.read_bytes(IndexLayout(index_root).manifest))
        self.shards = [ShardSearcher(index_root, s["shard"], storage=self.storage, cache_dir=cache_dir)
                       for s in self.manifest["shards"]]

    def search(self, query_emb: np.ndarray, k: int, nprobe: int | None = None) -> Hits:
        scores, ids = self.search_ids(query_emb, k, nprobe)
        return Hits(scores, self.passage_ids(ids))

    def search_ids(self, query_emb: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The merged top-k as faiss ids: (scores [Q, k], int64 ids [Q, k]; -1 where missing)."""
        results = [shard.search(query_emb, k, nprobe) for shard in self.shards]
        return merge_topk([r[0] for r in results], [r[1] for r in results], k)

    def docs(self, faiss_ids: np.ndarray, columns: tuple[str, ...] = ("id",)) -> dict[int, dict]:
        """faiss id -> {column: value} for every valid id, each read from the shard that holds it."""
        found: dict[int, dict] = {}
        for shard in self.shards:
            wanted = np.unique(faiss_ids[(faiss_ids >= shard.first_id) & (faiss_ids < shard.first_id + shard.size)])
            found.update(zip(wanted.tolist(), shard.lookup(wanted, columns)))
        return found

    def passage_ids(self, faiss_ids: np.ndarray) -> list[list[str | None]]:
        docs = self.docs(faiss_ids)
        return [[docs[i]["id"] if i in docs else None for i in row] for row in faiss_ids.tolist()]


class ExactSearcher:
    """Brute-force inner product over a run's embeddings (all in memory: for evaluation sizes)."""

    def __init__(self, run_uri: str, *, storage: Storage | None = None):
        storage = storage or Storage()
        files = storage.list_files(RunLayout(run_uri).folder("embeddings"), suffix=".parquet")
        table = pa.concat_tables([storage.read_table(f, columns=["id", "embedding"]) for f in files])
        self.ids = table["id"].to_pylist()
        vectors = vectors_of(table)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def search(self, query_emb: np.ndarray, k: int) -> Hits:
        scores, rows = self.index.search(np.ascontiguousarray(query_emb, dtype=np.float32), k)
        return Hits(scores, [[self.ids[r] if r >= 0 else None for r in row] for row in rows.tolist()])
