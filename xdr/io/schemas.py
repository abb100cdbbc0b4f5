"""Arrow schemas of the Parquet datasets each stage writes (the data contracts)."""

import hashlib
from collections.abc import Sequence

import pyarrow as pa

SCHEMA_VERSION = 1

# `digest`: of title and text (passage_digest), so that a later run over a new corpus version finds the
# unchanged passages by reading two small columns (xdr.pipeline.reuse). Runs written before it lack it.
PASSAGES = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string()), ("lang", pa.string()),
                      ("digest", pa.binary(16))])


def passage_digest(title: str, text: str) -> bytes:
    return hashlib.blake2b(f"{title}\x1f{text}".encode(), digest_size=16).digest()


def digests(titles: Sequence[str], texts: Sequence[str]) -> pa.Array:
    return pa.array([passage_digest(t, x) for t, x in zip(titles, texts)], pa.binary(16))

REJECTS = pa.schema([("source", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("excerpt", pa.string())])

QUERIES = pa.schema([("passage_id", pa.string()), ("lang", pa.string()), ("qidx", pa.int16()), ("text", pa.string())])


def embeddings(dim: int, dtype: str) -> pa.Schema:
    """`id`, the fused vector, and how many generated queries went into it."""
    value_type = {"float32": pa.float32(), "float16": pa.float16()}[dtype]
    return pa.schema([("id", pa.string()), ("embedding", pa.list_(value_type, dim)), ("n_queries", pa.int16())])
