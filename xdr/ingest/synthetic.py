"""Clustered synthetic vectors written as an indexing run, for index tests and benchmarks."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from xdr.io import schemas
from xdr.io.layout import RunLayout
from xdr.io.storage import Storage


def clustered_vectors(n: int, dim: int, *, clusters: int = 100, spread: float = 0.3, seed: int = 0,
                      centres_seed: int = 0) -> np.ndarray:
    """float32 [n, dim]: points around `clusters` random unit centres, so IVF has structure to find.
    Draws with the same `centres_seed` share centres (a corpus and its queries); `seed` draws the points."""
    centres = np.random.default_rng(centres_seed).normal(size=(clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, clusters, size=n)] + rng.normal(scale=spread / np.sqrt(dim), size=(n, dim))
    return points.astype(np.float32)


def write_run(storage: Storage, run_uri: str, vectors: np.ndarray, *, part_size: int,
              text_of=lambda pid: f"text of {pid}") -> list[str]:
    """Write vectors as a finished run (passages/, embeddings/, manifest.json). Returns the passage ids."""
    layout = RunLayout(run_uri)
    ids = [f"v{i:08d}" for i in range(len(vectors))]
    dim = vectors.shape[1]
    parts = 0
    for part, start in enumerate(range(0, len(vectors), part_size)):
        chunk = slice(start, start + part_size)
        part_ids = ids[chunk]
        storage.write_table(layout.part("passages", part), pa.table(
            {"id": part_ids, "title": [""] * len(part_ids), "text": [text_of(i) for i in part_ids],
             "lang": ["en"] * len(part_ids), "digest": schemas.digests([""] * len(part_ids),
                                                                       [text_of(i) for i in part_ids])},
            schema=schemas.PASSAGES))
        storage.write_table(layout.part("embeddings", part), pa.table({
            "id": part_ids,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[chunk].reshape(-1)), dim),
            "n_queries": pa.array(np.zeros(len(part_ids), dtype=np.int16)),
        }, schema=schemas.embeddings(dim, "float32")))
        parts = part + 1
    manifest = {"status": "complete", "counts": {"parts": parts, "embeddings": len(vectors)},
                "config": {"encoder": {"model": "synthetic"}}}
    storage.write_bytes(layout.manifest, json.dumps(manifest).encode())
    return ids
