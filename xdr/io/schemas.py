"""Arrow schemas of the Parquet datasets each stage writes (the data contracts)."""

import pyarrow as pa

SCHEMA_VERSION = 1

PASSAGES = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string()), ("lang", pa.string())])

REJECTS = pa.schema([("source", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("excerpt", pa.string())])

QUERIES = pa.schema([("passage_id", pa.string()), ("lang", pa.string()), ("qidx", pa.int16()), ("text", pa.string())])


def embeddings(dim: int, dtype: str) -> pa.Schema:
    """`id`, the fused vector, and how many generated queries went into it."""
    value_type = {"float32": pa.float32(), "float16": pa.float16()}[dtype]
    return pa.schema([("id", pa.string()), ("embedding", pa.list_(value_type, dim)), ("n_queries", pa.int16())])
