"""The model stages as part-at-a-time callables, the shape Ray Data's actor pools run.

Each stage loads its model once in `__init__`. `run_part(part)` reads the part's input from the run
folder, writes its output file atomically and returns a small summary dict; a part whose output file
already exists is skipped, which is how a rerun resumes. `__call__(batch)` maps a batch of part
numbers (`{"part": [...]}`) to their summaries, so the same class serves a Ray Data actor pool, a
benchmark loop or a test without Ray.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xdr.config import IndexingJobConfig
from xdr.io import schemas
from xdr.io.layout import RunLayout
from xdr.io.storage import FileRecord, Storage
from xdr.models.encoder import make_encoder
from xdr.models.generator import make_generator
from xdr.pipeline.fusion import fuse
from xdr.pipeline.reuse import ReusePlan, in_row_order


def _summary(prefix: str, part: int, record: FileRecord, rows: int, seconds: float, skipped: bool,
             **extra: Any) -> dict[str, Any]:
    out = {"part": part, f"{prefix}_file": record.uri, f"{prefix}_bytes": record.bytes,
           f"{prefix}_sha256": record.sha256, f"{prefix}_rows": rows, f"{prefix}_seconds": seconds,
           f"{prefix}_skipped": skipped}
    out.update({f"{prefix}_{k}": v for k, v in extra.items()})
    return out


def _rows_except(rows: int, taken: np.ndarray) -> np.ndarray:
    """The rows 0..rows-1 that are not in `taken`: what the models still have to do."""
    keep = np.ones(rows, dtype=bool)
    keep[taken] = False
    return np.flatnonzero(keep)


def _map_batch(stage, batch: dict[str, Any]) -> dict[str, list]:
    """Run `stage.run_part` on every part of a batch; keep the columns the batch already had."""
    rows = []
    for i, part in enumerate(batch["part"]):
        carried = {k: v[i] for k, v in batch.items() if k != "part"}
        rows.append({**carried, **stage.run_part(int(part))})
    return {k: [row[k] for row in rows] for k in rows[0]}


class GenerateQueriesStage:
    """passages/part-N -> queries/part-N (passage_id, lang, qidx, text)."""

    def __init__(self, config: IndexingJobConfig, device: str | None = None):
        self.config = config
        self.storage = Storage(config.storage)
        self.layout = RunLayout(config.output)
        self.generator = make_generator(config.generator, device, self.storage)

    def run_part(self, part: int) -> dict[str, Any]:
        start = time.perf_counter()
        out_uri = self.layout.part("queries", part)
        if self.storage.exists(out_uri):
            record = self.storage.record(out_uri)
            rows = self.storage.parquet_rows(out_uri)  # from the footer: no second read of the data
            return _summary("queries", part, record, rows, time.perf_counter() - start, True)
        passages = self.storage.read_table(self.layout.part("passages", part), columns=["id", "title", "text"])
        plan = ReusePlan(self.storage, self.config, part)
        todo = _rows_except(passages.num_rows, plan.rows())
        generated = pa.Table.from_pylist(self.generator.generate(passages.take(todo).to_pylist()) if len(todo) else [],
                                         schema=schemas.QUERIES)
        queries = generated
        if len(todo) < passages.num_rows:  # some rows' queries come from an earlier run: merge in row order
            owner = pc.index_in(generated["passage_id"], value_set=passages["id"]).cast(pa.int64())
            queries = in_row_order([plan.copy("queries", passages["id"]), generated.append_column("_row", owner)],
                                   schemas.QUERIES)
        record = self.storage.write_table(out_uri, queries)
        return _summary("queries", part, record, queries.num_rows, time.perf_counter() - start, False,
                        passages_generated=len(todo))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        return _map_batch(self, batch)


class EmbedPartStage:
    """passages/part-N + queries/part-N -> embeddings/part-N (id, fused embedding, n_queries)."""

    def __init__(self, config: IndexingJobConfig, device: str | None = None):
        self.config = config
        self.storage = Storage(config.storage)
        self.layout = RunLayout(config.output)
        self.queries_layout = RunLayout(config.queries_from or config.output)
        self.encoder = make_encoder(config.encoder, device=device, storage=self.storage)
        gen = config.generator
        self.languages = list(gen.languages)
        self.queries_per_language = (config.fusion.queries_per_language
                                     if config.fusion.queries_per_language is not None else gen.queries_per_language)
        self.schema = schemas.embeddings(self.encoder.dim, config.embedding_dtype)

    def _usable_queries(self, part: int) -> pa.Table:
        """The part's generated queries that fusion uses: configured languages, first k per language,
        non-empty text."""
        table = self.storage.read_table(self.queries_layout.part("queries", part))
        keep = pc.and_(pc.and_(pc.is_in(table["lang"], pa.array(self.languages)),
                               pc.less(table["qidx"], self.queries_per_language)),
                       pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table["text"])), 0))
        return table.filter(keep)

    def run_part(self, part: int) -> dict[str, Any]:
        start = time.perf_counter()
        out_uri = self.layout.part("embeddings", part)
        if self.storage.exists(out_uri):
            record = self.storage.record(out_uri)
            table = self.storage.read_table(out_uri, columns=["n_queries"])
            n_queries = table["n_queries"].to_numpy()
            return _summary("embeddings", part, record, table.num_rows, time.perf_counter() - start, True,
                            queries_used=int(n_queries.sum()), without_queries=int((n_queries == 0).sum()))
        passages = self.storage.read_table(self.layout.part("passages", part), columns=["id", "title", "text"])
        plan = ReusePlan(self.storage, self.config, part)
        todo = _rows_except(passages.num_rows, plan.rows(embeddings=True))
        computed, queries_encoded = self._embed(part, passages.take(todo), passages["id"])
        table = computed
        if len(todo) < passages.num_rows:  # some rows' embeddings come from an earlier run
            table = in_row_order([plan.copy("embeddings", passages["id"], embeddings=True),
                                  computed.append_column("_row", pa.array(todo, pa.int64()))], self.schema)
        record = self.storage.write_table(out_uri, table)
        n_queries = table["n_queries"].to_numpy()
        return _summary("embeddings", part, record, table.num_rows, time.perf_counter() - start, False,
                        queries_used=int(n_queries.sum()), without_queries=int((n_queries == 0).sum()),
                        passages_encoded=len(todo), queries_encoded=queries_encoded)

    def _embed(self, part: int, passages: pa.Table, part_ids: pa.Array) -> tuple[pa.Table, int]:
        """Encode and fuse `passages` (a part's, or those of its rows that reuse found no embedding for);
        returns their rows and how many queries were encoded. `part_ids`: every id of the part."""
        if passages.num_rows == 0:
            return self.schema.empty_table(), 0
        ids = passages["id"].to_pylist()
        passage_emb = self.encoder.encode_passages(passages["title"].to_pylist(), passages["text"].to_pylist())
        fused, n_queries, encoded = passage_emb, np.zeros(len(ids), dtype=np.int64), 0
        if self.config.fusion.alpha > 0 and self.queries_per_language > 0:
            queries = self._usable_queries(part)
            stray = pc.invert(pc.is_in(queries["passage_id"], value_set=part_ids))
            if pc.any(stray).as_py():
                raise ValueError(f"{self.queries_layout.part('queries', part)} has queries for passage "
                                 f"{queries.filter(stray)['passage_id'][0].as_py()!r}, which is not in "
                                 f"{self.layout.part('passages', part)}: queries_from must be a run over the same "
                                 "corpus with the same corpus.passages_per_part")
            queries = queries.filter(pc.is_in(queries["passage_id"], value_set=passages["id"]))  # not: reused rows'
            owner = pc.index_in(queries["passage_id"], value_set=passages["id"]).to_numpy().astype(np.int64)
            query_emb = self.encoder.encode_queries(queries["text"].to_pylist())
            encoded = queries.num_rows
            fused, n_queries = fuse(passage_emb, query_emb, owner, alpha=self.config.fusion.alpha,
                                    mode=self.config.fusion.mode,
                                    nominal_queries=self.queries_per_language * len(self.languages))
        vectors = fused.astype(self.config.embedding_dtype).reshape(-1)
        return pa.table({
            "id": pa.array(ids, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors), self.encoder.dim),
            "n_queries": pa.array(n_queries, pa.int16()),
        }, schema=self.schema), encoded

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        return _map_batch(self, batch)
