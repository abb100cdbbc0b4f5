"""Choosing the index by the task metric (`xdr tune-index`).

Every point of a grid (FAISS factory string x nprobe x input dtype) is built over the same document vectors
and measured in what the user reports: the evaluation set's own metric per query (nDCG@10, R@100, RR@10
for BEIR/MIRACL; mAP@100 for LAReQA's multilingual pool), its difference from exact search with a paired
t-test over the queries, single-thread throughput (one batch of all queries) and one-query latency
(p50/p99), bytes per vector and the index's size, build time. `recommend` picks the smallest index (then
the fastest) whose metric stays within a relative loss of exact search.

No library measures ANN choices in a retrieval metric (faiss' autotune and ann-benchmarks optimise vector
recall), hence this module; the metrics themselves come from ir-measures (trec_eval semantics).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from xdr.eval.metrics import average_precision, paired_t_test, trec_metrics
from xdr.index.build import (
    PQ_TRAIN_POINTS,
    default_factory,
    nlist_of,
    part_offsets,
    sample_rows,
    to_bytes,
    train_sample_size,
)

LATENCY_QUERIES = 200  # single-query timings per point
ID_BYTES = 8  # an IVF list stores an int64 id next to every code


@dataclass
class EvalSet:
    """Queries and a per-query scorer over ranked document ids (row i of the vectors is doc_ids[i])."""

    name: str
    doc_ids: list[str]
    query_texts: list[str]
    query_langs: list[str]
    primary: str
    depth: int
    score: Callable[[list[list[str | None]], np.ndarray], dict[str, np.ndarray]]  # measure -> value per query
    corpus: list[tuple[str, str]] | None = None  # (title, text) per doc_ids entry, to encode here


def beir_set(name: str, data, lang: str = "", depth: int = 100,
             measures: Sequence[str] = ("nDCG@10", "R@100", "RR@10")) -> EvalSet:
    """BEIR / MIRACL / TREC topics + qrels (a BeirDataset): trec_eval metrics per query."""
    qids = [q for q in data.topics if q in data.qrels]
    qrels = {q: data.qrels[q] for q in qids}

    def score(ranked, scores):
        run = {q: {d: float(s) for d, s in zip(row, srow) if d is not None}
               for q, row, srow in zip(qids, ranked, scores)}
        _, per_query = trec_metrics(run, qrels, measures)
        return {m: np.array([per_query[m][q] for q in qids]) for m in per_query}

    return EvalSet(name, list(data.corpus), [data.topics[q] for q in qids], [lang] * len(qids), measures[0], depth,
                   score, list(data.corpus.values()))


def lareqa_set(name: str, data, depth: int = 100) -> EvalSet:
    """LAReQA's multilingual setting: every question against the pooled candidates of all languages,
    mAP@depth (AP truncated at the retrieved depth, as an index returns no more)."""
    questions = [q for lang in data.languages for q in data.questions[lang]]
    relevant = [{str(c) for c in data.relevant[(q.lang, q.qid)]} for q in questions]

    def score(ranked, scores):
        values = []
        for row, rel in zip(ranked, relevant):  # relevant items not retrieved count, ranked past the depth
            ranks = [r + 1 for r, d in enumerate(row) if d in rel]
            values.append(average_precision(ranks + [depth + 1] * (len(rel) - len(ranks)), depth))
        return {f"mAP@{depth}": np.array(values)}

    return EvalSet(name, [str(i) for i in range(len(data.candidates))], [q.text for q in questions],
                   [q.lang for q in questions], f"mAP@{depth}", depth, score, [("", c.text) for c in data.candidates])


# --- the grid -------------------------------------------------------------------------------------
def default_grid(n_vectors: int, dim: int) -> list[str]:
    """Flat (the exact reference) and, for the build's default IVF size and a quarter of it: full vectors,
    SQfp16, SQ8, and 8-bit PQ at about dim/16, dim/8 and dim/4 bytes, each with and without OPQ."""
    nlist = nlist_of(default_factory(n_vectors, dim))
    sizes = sorted({max(1, nlist // 4), nlist})
    pq_ms = sorted({m for m in (dim // 16, dim // 8, dim // 4) if m >= 1 and dim % m == 0})
    can_pq = n_vectors >= PQ_TRAIN_POINTS // 4  # 8-bit codebooks want ~256 points per centroid; a few less do
    grid = ["Flat"]
    for n in sizes:
        grid += [f"IVF{n},Flat", f"IVF{n},SQfp16", f"IVF{n},SQ8"]
        if can_pq:
            grid += [f"IVF{n},PQ{m}np" for m in pq_ms] + [f"OPQ{m},IVF{n},PQ{m}np" for m in pq_ms]
    return grid


def train_sample(vectors: np.ndarray, rows_per_part: list[int], factory: str, seed: int) -> np.ndarray:
    """The rows the build job (ray_jobs.build_index) would train this factory on: the same size rule and
    the same uniform sample, so a tuned point and the built index agree."""
    size = train_sample_size(len(vectors), factory)
    rows = sample_rows(rows_per_part, size, seed)
    return vectors[np.concatenate([r + o for r, o in zip(rows, part_offsets(rows_per_part))])]


def build(factory: str, vectors: np.ndarray, rows_per_part: list[int], seed: int = 0) -> tuple[faiss.Index, float]:
    """The index over all vectors (inner product) and the seconds to train and fill it."""
    start = time.perf_counter()
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if factory != "Flat":
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        index.train(np.ascontiguousarray(train_sample(vectors, rows_per_part, factory, seed)))
    index.add(vectors)
    return index, time.perf_counter() - start


def _percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q) * 1000)


def measure(index: faiss.Index, factory: str, nprobe: int | None, queries: np.ndarray, data: EvalSet,
            exact: dict[str, np.ndarray] | None) -> dict:
    """One grid point: the metric per measure (mean, per language), its paired difference from `exact`
    (per-query values of the exact reference; None for the reference itself), speed."""
    if nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = nprobe
    start = time.perf_counter()
    scores, rows = index.search(queries, data.depth)
    batch_s = time.perf_counter() - start
    single = []
    for q in queries[:LATENCY_QUERIES]:
        t = time.perf_counter()
        index.search(q[None], data.depth)
        single.append(time.perf_counter() - t)
    ranked = [[data.doc_ids[r] if r >= 0 else None for r in row] for row in rows.tolist()]
    values = data.score(ranked, scores)
    point: dict[str, Any] = {"factory": factory, "nprobe": nprobe,
             "metrics": {m: float(v.mean()) for m, v in values.items()},
             "per_language": per_language(values, data.query_langs),
             "queries_per_s": len(queries) / batch_s, "p50_ms": _percentile_ms(single, 50),
             "p99_ms": _percentile_ms(single, 99), "per_query": {m: v.tolist() for m, v in values.items()}}
    if exact is not None:
        vs_exact: dict[str, dict[str, float]] = {}
        point["vs_exact"] = vs_exact
        for m, v in values.items():
            test = paired_t_test(exact[m], v)
            vs_exact[m] = {"difference": test.mean_difference, "relative": _relative(v.mean(), exact[m]),
                                    "p": test.p}
    return point


def per_language(values: dict[str, np.ndarray], query_langs: list[str]) -> dict[str, dict[str, float]]:
    """measure -> language -> mean over that language's queries (queries without a language skipped)."""
    langs = np.array(query_langs)
    return {m: {x: float(v[langs == x].mean()) for x in sorted(set(query_langs)) if x} for m, v in values.items()}


def _relative(value: float, exact: np.ndarray) -> float:
    reference = float(np.mean(exact))
    return (value - reference) / reference if reference else 0.0


def measure_factory(factory: str, vectors: np.ndarray, rows_per_part: list[int], queries: np.ndarray,
                    data: EvalSet, exact: dict[str, np.ndarray], nprobes: Sequence[int], dtype: str,
                    seed: int = 0, threads: int = 1) -> list[dict]:
    """Build one factory from `dtype` inputs (float16: the vectors rounded as a float16 run stores them) and
    measure it at every nprobe up to its list count, on `threads` threads."""
    faiss.omp_set_num_threads(threads)
    if dtype == "float16":
        vectors = vectors.astype(np.float16).astype(np.float32)
    index, build_s = build(factory, np.ascontiguousarray(vectors, dtype=np.float32), rows_per_part, seed)
    size = len(to_bytes(index))
    common = {"dtype": dtype, "build_s": build_s, "index_bytes": size, "bytes_per_vector": size / index.ntotal,
              "code_bytes": _code_bytes(index), "nlist": nlist_of(factory), "vectors": int(index.ntotal)}
    probes = [None] if factory == "Flat" else [p for p in nprobes if p <= nlist_of(factory)]
    return [measure(index, factory, p, queries, data, exact) | common for p in probes]


def _code_bytes(index: faiss.Index) -> int:
    """Bytes stored per vector in the lists (without the id)."""
    if isinstance(index, faiss.IndexFlat):
        return index.d * 4
    return int(faiss.extract_index_ivf(index).code_size)


# --- choosing ---------------------------------------------------------------------------------------
def recommend(points: list[dict], reference: dict, primary: str, max_loss: float) -> dict | None:
    """The point with the fewest bytes per vector (then the lowest p50) whose primary metric is at least
    (1 - max_loss) x the reference's; None if none is."""
    bound = (1 - max_loss) * reference["metrics"][primary]
    within = [p for p in points if p["metrics"][primary] >= bound]
    return min(within, key=lambda p: (p["bytes_per_vector"], p["p50_ms"], p["nprobe"] or 0)) if within else None


def projection(point: dict, dim: int, target_vectors: int, shards: int) -> dict:
    """Memory of the chosen kind of index at `target_vectors`: codes + ids per vector, plus the coarse
    quantizer with the list count the build would use there (about 4 sqrt(N)) and an OPQ matrix; nprobe
    keeps its fraction of the lists. Assumes the metric behaves at N as it did here (it does not exactly:
    more vectors per list make each probe cheaper in recall, so check at the largest N you can)."""
    if point["factory"] == "Flat":
        total = target_vectors * dim * 4
        return {"vectors": target_vectors, "factory": "Flat", "nprobe": None, "bytes": total,
                "bytes_per_shard": math.ceil(total / shards), "shards": shards}
    nlist = nlist_of(default_factory(target_vectors, dim))
    factory = re.sub(r"IVF\d+", f"IVF{nlist}", point["factory"])
    total = target_vectors * (point["code_bytes"] + ID_BYTES) + nlist * dim * 4
    if factory.startswith("OPQ"):
        total += dim * dim * 4
    nprobe = max(1, round(point["nprobe"] * nlist / point["nlist"]))
    return {"vectors": target_vectors, "factory": factory, "nprobe": nprobe, "bytes": int(total),
            "bytes_per_shard": math.ceil(total / shards), "shards": shards}


def pareto(points: list[dict], primary: str) -> list[dict]:
    """Points no other point beats on metric, p50 latency and bytes per vector at once."""
    def key(p):  # larger is better in every coordinate
        return p["metrics"][primary], -p["p50_ms"], -p["bytes_per_vector"]

    def dominates(q, p):
        return all(a >= b for a, b in zip(key(q), key(p))) and key(q) != key(p)

    return [p for p in points if not any(dominates(q, p) for q in points)]


def point_name(point: dict) -> str:
    probe = f" nprobe={point['nprobe']}" if point["nprobe"] is not None else ""
    return f"{point['factory']}{probe} ({point['dtype']})"
