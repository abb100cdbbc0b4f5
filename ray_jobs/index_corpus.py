"""The indexing job: corpus -> validated parts -> generated queries -> fused embeddings.

    python -m ray_jobs.index_corpus --config configs/xor_tydi.yaml --output=s3://bucket/run
    ray job submit --working-dir . -- python -m ray_jobs.index_corpus --config ...

1. Ray tasks read and validate the corpus in parallel (files and byte ranges), find duplicate ids by
   hash partition, and cut passages/ and rejects/ parts (xdr.ingest.validation); the outcome is committed once
   to validation.json, so a rerun never reads the corpus again.
   With `reuse_from`, Ray tasks then match its passages with the earlier runs' by id and content digest
   (xdr.pipeline.reuse) and commit a plan per part to reuse/; the stages copy what the plan names.
2. A Ray Data pipeline over the part numbers streams each part through a generator actor pool and an
   encoder actor pool; each actor writes its part's file to storage and returns a small summary.
3. The driver follows the summaries (progress, ETA), then writes the manifest.
Rerunning the same command resumes: committed parts are skipped at every stage.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from ray_jobs.common import STALL_S, gpus_per_actor, on_terminal, run_job, workers_logs
from ray_jobs.tasks import RayTasks
from xdr.config import IndexingJobConfig
from xdr.ingest.validation import PrepareSummary, validate_corpus
from xdr.io.layout import RunLayout
from xdr.io.manifest import begin_run, finish_run, read_manifest
from xdr.io.storage import FileRecord, Storage
from xdr.pipeline.reuse import ReuseSummary, prepare_reuse
from xdr.pipeline.stages import EmbedPartStage, GenerateQueriesStage
from xdr.progress import Progress, StallWatch

log = logging.getLogger("xdr.index")


def check_queries_source(storage: Storage, config: IndexingJobConfig, parts: int) -> None:
    """queries_from must hold a queries part for every part of this run."""
    assert config.queries_from is not None
    source = RunLayout(config.queries_from)
    read_manifest(storage, config.queries_from)  # raises a clear error if it is no run folder
    missing = [p for p in range(parts) if not storage.exists(source.part("queries", p))]
    if missing:
        raise ValueError(f"queries_from {config.queries_from!r} lacks queries for {len(missing)} of {parts} parts "
                         f"(first: {source.part('queries', missing[0])}); finish that run first")


def _prepare(storage: Storage, config: IndexingJobConfig) -> PrepareSummary:
    tasks = RayTasks(cpus_per_task=config.resources.cpus_per_validation_task, label="validate")
    return validate_corpus(storage, config.corpus, config.output, tasks, progress=log.info)


def _reuse(storage: Storage, config: IndexingJobConfig, prepared: PrepareSummary) -> ReuseSummary | None:
    if not config.reuse_from:
        return None
    tasks = RayTasks(cpus_per_task=config.resources.cpus_per_validation_task, label="reuse")
    return prepare_reuse(storage, config, [p.passages for p in prepared.parts], tasks, progress=log.info)


def build_pipeline(config: IndexingJobConfig, parts: list[int]) -> ray.data.Dataset:
    res = config.resources
    gpus = gpus_per_actor(res.gpus_per_actor)
    actor_args: dict[str, Any] = {"batch_size": 1, "num_gpus": gpus, "num_cpus": res.cpus_per_actor,
                  "fn_constructor_kwargs": {"config": config}}
    ds: ray.data.Dataset = ray.data.from_items([{"part": p} for p in parts], override_num_blocks=max(1, len(parts)))
    if not config.queries_from:
        ds = ds.map_batches(GenerateQueriesStage, compute=ray.data.ActorPoolStrategy(
            min_size=res.generator_actors[0], max_size=res.generator_actors[1]), **actor_args)
    return ds.map_batches(EmbedPartStage, compute=ray.data.ActorPoolStrategy(
        min_size=res.encoder_actors[0], max_size=res.encoder_actors[1]), **actor_args)


def run_indexing(config: IndexingJobConfig, *, progress_every_s: float = 5.0) -> dict[str, Any]:
    config = config.model_copy(update={"storage": Storage(config.storage).resolved()})
    storage = Storage(config.storage)
    started = time.perf_counter()
    manifest = begin_run(storage, config)
    removed = storage.remove_stale_temporaries(config.output)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)

    log.info("reading and validating %s", config.corpus.path)
    prepared = _prepare(storage, config)
    prepare_s = time.perf_counter() - started
    log.info("corpus: %d rows read, %d passages in %d parts, %d rejected %s (%.1fs)", prepared.rows_read,
             prepared.passages, len(prepared.parts), prepared.rejects, dict(prepared.reject_reasons), prepare_s)
    if config.queries_from:
        check_queries_source(storage, config, len(prepared.parts))
    reuse = _reuse(storage, config, prepared)
    if reuse:
        log.info("the encoder runs for %d of %d passages, the generator for %d", prepared.passages
                 - reuse.reused_embeddings, prepared.passages, prepared.passages - reuse.reused_queries)
    reuse_s = time.perf_counter() - started - prepare_s

    passages_in = {p.part: p.passages for p in prepared.parts}
    progress = Progress("embed", prepared.passages, len(prepared.parts), every_s=progress_every_s, emit=log.info,
                        bar=on_terminal())
    summaries = []
    pipeline_start = time.perf_counter()
    with StallWatch("embed", STALL_S, log.warning, hint=workers_logs()) as watch:  # Ray Data yields rows, not refs
        for row in build_pipeline(config, sorted(passages_in)).iter_rows():
            watch.touch()
            summaries.append(row)
            progress.update(int(row["embeddings_rows"]), skipped=bool(row["embeddings_skipped"]))
    pipeline_s = time.perf_counter() - pipeline_start
    summaries.sort(key=lambda r: r["part"])

    embedded = sum(int(r["embeddings_rows"]) for r in summaries)
    if embedded != prepared.passages or len(summaries) != len(prepared.parts):
        raise RuntimeError(f"embedded {embedded} passages in {len(summaries)} parts, expected "
                           f"{prepared.passages} in {len(prepared.parts)}")
    new_rows = sum(int(r["embeddings_rows"]) for r in summaries if not r["embeddings_skipped"])
    files = [f for p in prepared.parts for f in p.files] + [storage.record(RunLayout(config.output).validation)]
    for stage in ("queries", "embeddings"):
        files += [FileRecord(r[f"{stage}_file"], int(r[f"{stage}_bytes"]), r[f"{stage}_sha256"])
                  for r in summaries if f"{stage}_file" in r]
    total_s = time.perf_counter() - started
    return finish_run(
        storage, config, manifest,
        counts={
            "rows_read": prepared.rows_read,
            "passages": prepared.passages,
            "rejects": prepared.rejects,
            "reject_reasons": dict(prepared.reject_reasons),
            "parts": len(prepared.parts),
            "queries_generated": sum(int(r.get("queries_rows", 0)) for r in summaries),
            "queries_fused": sum(int(r["embeddings_queries_used"]) for r in summaries),
            "passages_without_queries": sum(int(r["embeddings_without_queries"]) for r in summaries),
            "embeddings": embedded,
            "parts_resumed": sum(bool(r["embeddings_skipped"]) for r in summaries),
            "validation_resumed": prepared.resumed,
            # what reached the models in this attempt (a resumed attempt counts only the parts it did)
            "passages_generated": sum(int(r.get("queries_passages_generated", 0)) for r in summaries),
            "passages_encoded": sum(int(r.get("embeddings_passages_encoded", 0)) for r in summaries),
            "queries_encoded": sum(int(r.get("embeddings_queries_encoded", 0)) for r in summaries),
        },
        reuse=({"sources": [vars(s) for s in reuse.sources], **reuse.counts(),
                "generator_calls_saved": reuse.reused_queries * len(config.generator.languages)
                * config.generator.queries_per_language} if reuse else None),
        source_files=prepared.source_files,
        files=[vars(f) for f in files],
        timings={
            "prepare_s": round(prepare_s, 3),
            "reuse_s": round(reuse_s, 3),
            "pipeline_s": round(pipeline_s, 3),
            "total_s": round(total_s, 3),
            "generate_busy_s": round(sum(float(r.get("queries_seconds", 0)) for r in summaries), 3),
            "embed_busy_s": round(sum(float(r["embeddings_seconds"]) for r in summaries), 3),
        },
        throughput={"passages_per_s": round(new_rows / pipeline_s, 2) if pipeline_s > 0 else None},
    )


def format_summary(manifest: dict[str, Any]) -> str:
    c, t = manifest["counts"], manifest["timings"]
    lines = [
        f"run:        {manifest['config']['output']}  ({manifest['status']}, attempt {manifest['attempts']})",
        f"corpus:     {c['rows_read']:,} rows read, {c['passages']:,} passages, {c['rejects']:,} rejected "
        f"{c['reject_reasons'] or ''}{' (validated by an earlier attempt)' if c.get('validation_resumed') else ''}",
        f"queries:    {c['queries_generated']:,} generated, {c['queries_fused']:,} fused, "
        f"{c['passages_without_queries']:,} passages without queries",
        f"embeddings: {c['embeddings']:,} in {c['parts']} parts ({c['parts_resumed']} resumed from an earlier run)",
        *([f"reuse:      {r['reused_embeddings']:,} passages reused whole, "
           f"{r['reused_queries'] - r['reused_embeddings']:,} their queries only; {r['changed']:,} changed, "
           f"{r['added']:,} new, {r['dropped']:,} dropped; the models ran for {c['passages_generated']:,} (generator) "
           f"and {c['passages_encoded']:,} (encoder) passages"] if (r := manifest.get("reuse")) else []),
        f"time:       {t['total_s']:.1f}s total, {t['prepare_s']:.1f}s reading, {t['pipeline_s']:.1f}s generate+embed "
        f"({manifest['throughput']['passages_per_s']} passages/s)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_job("Generate queries, encode and fuse a corpus into embedding shards.", argv, IndexingJobConfig,
                   run_indexing, format_summary)


if __name__ == "__main__":
    main()
