"""The index build job: a finished indexing run -> a sharded IVF(-PQ) FAISS index.

    python -m ray_jobs.build_index --run=s3://bucket/run --shards=4
    ray job submit --working-dir . -- python -m ray_jobs.build_index --config cluster/build_index.yaml

1. One task draws a uniform sample of the embeddings (only the sampled rows are read) and trains the index.
2. One task per embeddings part adds that part to a copy of the trained index (in parallel).
3. One task per serving shard merges its parts' partial indexes (memory: one shard plus one partial).
4. The driver checks every passage is in exactly one shard and writes index/manifest.json.
Every file is committed atomically and skipped when rerun, so a killed build resumes.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import ray

from ray_jobs.common import as_finished, on_terminal, run_job
from xdr import index as xindex
from xdr.config import IndexBuildConfig
from xdr.layout import RunLayout
from xdr.manifest import code_version, now, read_manifest
from xdr.progress import Progress
from xdr.storage import Storage

log = logging.getLogger("xdr.build_index")


def _train(storage: Storage, config: IndexBuildConfig, rows_per_part: list[int]) -> dict[str, Any]:
    layout = xindex.IndexLayout(config.index_root)
    total = sum(rows_per_part)
    dim = storage.read_table(RunLayout(config.run).part("embeddings", 0), columns=["embedding"]).schema.field(
        "embedding").type.list_size
    factory = config.factory or xindex.default_factory(total, dim)
    nlist = xindex.nlist_of(factory, dim)
    sample_size = config.train_sample or min(total, max(64 * nlist, xindex.PQ_TRAIN_POINTS))
    if not storage.exists(layout.trained):
        start = time.perf_counter()
        sample = xindex.read_sample(storage, config.run, rows_per_part, sample_size, config.seed)
        index = xindex.train_index(factory, sample, seed=config.seed, use_gpu=config.use_gpu)
        storage.write_bytes(layout.trained, xindex.to_bytes(index))
        log.info("trained %s on %d vectors in %.1fs", factory, len(sample), time.perf_counter() - start)
    return {"factory": factory, "dim": dim, "nlist": nlist, "train_sample": min(sample_size, total),
            "faiss_gpus": xindex.faiss_gpus()}


def _gpus_per_task(config: IndexBuildConfig) -> int:
    """One GPU for each train and add task when use_gpu asks and the cluster has GPUs now."""
    if not config.use_gpu:
        return 0
    if ray.cluster_resources().get("GPU", 0) >= 1:
        return 1
    log.warning("use_gpu: the cluster has no GPU now, so the index is trained and added on CPUs (on an "
                "autoscaling cluster, keep a GPU worker up while the build starts)")
    return 0


def _check_settings(storage: Storage, config: IndexBuildConfig) -> None:
    """Record what this index is built with; refuse to resume a folder built with other settings
    (its trained index and partial files would be silently reused)."""
    uri = xindex.IndexLayout(config.index_root).settings
    settings = config.model_dump(mode="json", include={"run", "factory", "train_sample", "shards", "with_text",
                                                        "seed"})
    if storage.exists(uri):
        previous = json.loads(storage.read_bytes(uri))
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        if changed:
            details = "; ".join(f"{k}: {previous.get(k)!r} -> {settings[k]!r}" for k in changed)
            raise ValueError(f"{config.index_root} holds an index built with other settings ({details}); "
                             "choose another output folder or delete it")
    else:
        storage.write_bytes(uri, json.dumps(settings, indent=2).encode())


def build_index(config: IndexBuildConfig) -> dict[str, Any]:
    config = config.model_copy(update={"storage": Storage(config.storage).resolved()})
    storage = Storage(config.storage)
    started = time.perf_counter()
    run_manifest = read_manifest(storage, config.run)
    if run_manifest.get("status") != "complete":
        raise ValueError(f"{config.run} is not a finished indexing run (status {run_manifest.get('status')!r}); "
                         "rerun the indexing job to finish it first")
    _check_settings(storage, config)
    layout = RunLayout(config.run)
    parts = run_manifest["counts"]["parts"]
    rows_per_part = [storage.parquet_rows(layout.part("embeddings", p)) for p in range(parts)]
    offsets = xindex.part_offsets(rows_per_part)

    gpus = _gpus_per_task(config)
    training = ray.remote(_train).options(num_cpus=1, num_gpus=gpus).remote(storage, config, rows_per_part)
    trained = ray.get(next(as_finished([training], "train")))
    train_s = time.perf_counter() - started
    if gpus and not trained["faiss_gpus"]:
        log.warning("use_gpu: faiss on the GPU node has no GPU support (a faiss-cpu build; `pip install xdr[gpu]` "
                    "installs faiss-gpu), so the index is trained and added on CPUs")

    add = ray.remote(xindex.add_part).options(num_cpus=1, num_gpus=gpus, max_retries=2)
    pending = {add.remote(storage, config.run, config.index_root, p, offsets[p], use_gpu=config.use_gpu): p
               for p in range(parts)}
    progress = Progress("add", sum(rows_per_part), parts, emit=log.info,
                        bar=on_terminal())
    for done in as_finished(pending, "add"):
        ray.get(done)
        progress.update(rows_per_part[pending[done]])
    add_s = time.perf_counter() - started - train_s

    plan = xindex.shard_plan(rows_per_part, config.shards)
    merge = ray.remote(xindex.merge_shard).options(num_cpus=1, max_retries=2)
    merging = [merge.remote(storage, config.run, config.index_root, s, plan_parts, offsets, with_text=config.with_text)
               for s, plan_parts in enumerate(plan)]
    finished = {ref: ray.get(ref) for ref in as_finished(merging, "merge")}
    shards = [finished[ref] for ref in merging]
    expected = run_manifest["counts"]["embeddings"]
    indexed = sum(s["vectors"] for s in shards)
    if indexed != expected or sum(rows_per_part) != expected:
        raise RuntimeError(f"the shards hold {indexed} vectors, the run has {expected} embeddings")

    manifest = {
        **trained,
        "metric": "inner_product",
        "nprobe": config.nprobe,
        "source_run": config.run,
        "encoder": run_manifest["config"]["encoder"],
        "vectors": indexed,
        "shards": [{k: v for k, v in s.items()} for s in shards],
        "code_version": code_version(),
        "config": config.model_dump(mode="json"),
        "timings": {"train_s": round(train_s, 3), "add_s": round(add_s, 3),
                    "total_s": round(time.perf_counter() - started, 3)},
        "finished_at": now(),
    }
    storage.write_bytes(xindex.IndexLayout(config.index_root).manifest, json.dumps(manifest, indent=2).encode())
    return manifest


def format_summary(manifest: dict[str, Any]) -> str:
    sizes = ", ".join(f"{s['vectors']:,}" for s in manifest["shards"])
    return (f"index:  {manifest['factory']} ({manifest['dim']}-d, inner product), trained on "
            f"{manifest['train_sample']:,} vectors, nprobe {manifest['nprobe']}\n"
            f"shards: {len(manifest['shards'])} ({sizes} vectors; {manifest['vectors']:,} in all)\n"
            f"time:   {manifest['timings']['total_s']:.1f}s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_job("Build a sharded IVF-PQ index from an indexing run.", argv, IndexBuildConfig, build_index,
                   format_summary)


if __name__ == "__main__":
    main()
