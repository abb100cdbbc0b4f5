"""The single-reader validation xdr had before it ran on the cluster: one pass over the corpus in one
process, every id in one dict. Kept as the oracle the parallel validation must equal byte for byte."""

from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow as pa

from xdr.config import CorpusConfig
from xdr.ingest.corpus import PassageValidator, detect_format, iter_raw_rows, reason_kind
from xdr.io import schemas
from xdr.io.layout import RunLayout
from xdr.io.storage import Storage


def single_reader_parts(storage: Storage, config: CorpusConfig, run_uri: str) -> dict:
    """Write passages/ and rejects/ parts as the single reader did; return its counts."""
    layout = RunLayout(run_uri)
    validator = PassageValidator(default_lang=config.default_lang, max_text_chars=config.max_text_chars)
    passages, rejects, reasons = [], [], Counter()
    counts = {"rows_read": 0, "passages": 0, "parts": 0}

    def flush() -> None:
        part = counts["parts"]
        storage.write_table(layout.part("rejects", part), pa.Table.from_pylist(rejects, schema=schemas.REJECTS))
        storage.write_table(layout.part("passages", part), pa.Table.from_pylist(passages, schema=schemas.PASSAGES))
        counts["parts"] += 1
        passages.clear()
        rejects.clear()

    for uri in storage.expand(config.path):
        for row in iter_raw_rows(storage, uri, detect_format(uri, config.format), max_line_bytes=config.max_line_bytes):
            counts["rows_read"] += 1
            passage, reason = validator.check(row)
            if passage is not None:
                # the digest column, worked out here with hashlib (what xdr.io.schemas.passage_digest must equal)
                title_text = f"{passage['title']}\x1f{passage['text']}".encode()
                passages.append({**passage, "digest": hashlib.blake2b(title_text, digest_size=16).digest()})
                counts["passages"] += 1
                if len(passages) == config.passages_per_part:
                    flush()
            else:
                rejects.append({"source": row.source, "line": row.line, "reason": reason, "excerpt": row.excerpt})
                reasons[reason_kind(reason)] += 1
    if passages or rejects or not counts["parts"]:
        flush()
    return {**counts, "rejects": sum(reasons.values()), "reject_reasons": dict(reasons)}
