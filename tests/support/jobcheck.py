"""Independent re-computation of a run's outputs, for the job tests: the stage classes' models are
called directly (no Ray, no parts) and the fusion formula is written out again here."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from xdr.config import IndexingJobConfig
from xdr.models.encoder import Encoder
from xdr.models.generator import QueryGenerator


def expected_queries(config: IndexingJobConfig, passages: list[dict]) -> dict[tuple, str]:
    rows = QueryGenerator(config.generator).generate(passages)
    return {(r["passage_id"], r["lang"], r["qidx"]): r["text"] for r in rows}


def expected_embeddings(config: IndexingJobConfig, passages: list[dict], queries: dict[tuple, str]) -> dict:
    enc = Encoder(config.encoder)
    langs, n = config.generator.languages, config.generator.queries_per_language
    alpha = config.fusion.alpha
    p_emb = enc.encode_passages([p["title"] for p in passages], [p["text"] for p in passages])
    out = {}
    for p, e_p in zip(passages, p_emb):
        texts = [queries[(p["id"], lang, q)] for lang in langs for q in range(n)]
        texts = [t for t in texts if t.strip()]
        if not texts:
            out[p["id"]] = e_p
            continue
        q_sum = enc.encode_queries(texts).astype(np.float64).sum(axis=0)
        weight = len(langs) * n / len(texts) if config.fusion.mode == "sum" else 1 / len(texts)
        out[p["id"]] = (1 - alpha) * e_p + alpha * weight * q_sum
    return out


def table_rows(table: pa.Table) -> dict:
    return {r["id"]: np.asarray(r["embedding"], dtype=np.float64) for r in table.to_pylist()}
