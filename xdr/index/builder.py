"""The whole index build, through an executor (xdr.executor): a finished indexing run -> a sharded IVF(-PQ)
FAISS index. `ray_jobs.build_index` runs it as Ray tasks; tests run the same sequence in one process.

1. One step draws a uniform sample of the embeddings (only the sampled rows are read) and trains the index;
   or, with `quantizer_from` (a refresh), takes an earlier index's trained quantizer and measures how far the
   sample drifted from it (`refresh_quantizer`).
2. One step per embeddings part adds that part to a copy of the trained index (in parallel).
3. One step per serving shard merges its parts' partial indexes (memory: one shard plus one partial).
4. The driver checks every passage is in exactly one shard and writes index/manifest.json.
Every file is committed atomically and skipped when rerun, so a killed build resumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from xdr.config import IndexBuildConfig
from xdr.executor import Executor, LocalExecutor, TaskOptions
from xdr.index import build as steps
from xdr.io.layout import IndexLayout, RunLayout
from xdr.io.manifest import code_version, now, pin_settings, read_manifest
from xdr.io.storage import Storage
from xdr.progress import Progress

log = logging.getLogger("xdr.index.builder")

# what the index's files depend on: a rerun with other values would silently reuse the committed files
OUTPUT_SETTINGS = {"run", "factory", "train_sample", "shards", "with_text", "seed", "quantizer_from"}


def train(storage: Storage, config: IndexBuildConfig, rows_per_part: list[int]) -> dict[str, Any]:
    """Step 1 (skipped when trained.faissindex exists); returns what the manifest records of it."""
    if config.quantizer_from:
        return refresh_quantizer(storage, config, rows_per_part)
    layout = IndexLayout(config.index_root)
    total = sum(rows_per_part)
    dim = _dim(storage, config.run)
    factory = config.factory or steps.default_factory(total, dim)
    sample_size = steps.train_sample_size(total, factory, config.train_sample)
    if storage.exists(layout.trained):
        index = steps.from_bytes(storage.read_bytes(layout.trained))
    else:
        start = time.perf_counter()
        sample = steps.read_sample(storage, config.run, rows_per_part, sample_size, config.seed)
        index = steps.train_index(factory, sample, seed=config.seed, use_gpu=config.use_gpu)
        storage.write_bytes(layout.trained, steps.to_bytes(index))
        log.info("trained %s on %d vectors in %.1fs", factory, len(sample), time.perf_counter() - start)
    return {"factory": factory, "dim": dim, "nlist": steps.nlist_of(factory), "train_sample": sample_size,
            "faiss_gpus": steps.faiss_gpus(),
            "quantizer_fit": _fit(storage, index, config.run, rows_per_part, sample_size, config.seed)}


def _fit(storage: Storage, index, run: str, rows_per_part: list[int], sample_size: int, seed: int) -> dict:
    """The quantizer's fit to a run, on a sample drawn with another seed than the training sample's: k-means
    fits its own training points better than any others, so a refresh's new vectors are compared with other
    vectors of the original run, drawn the same way."""
    return steps.quantizer_fit(index, steps.read_sample(storage, run, rows_per_part, sample_size, seed + 1))


def _dim(storage: Storage, run: str) -> int:
    table = storage.read_table(RunLayout(run).part("embeddings", 0), columns=["embedding"])
    return table.schema.field("embedding").type.list_size


def refresh_quantizer(storage: Storage, config: IndexBuildConfig, rows_per_part: list[int]) -> dict[str, Any]:
    """Take `config.quantizer_from`'s trained index as this one's, and measure the drift: the new sample's
    fit (mean squared distance to its centroid, list imbalance) over the original training sample's."""
    assert config.quantizer_from
    source = IndexLayout(config.quantizer_from)
    if not storage.exists(source.manifest):
        raise ValueError(f"quantizer_from {config.quantizer_from!r} is not a finished index (no manifest.json); "
                         "build it first, or leave quantizer_from out to train a quantizer")
    original = json.loads(storage.read_bytes(source.manifest))
    if config.factory and config.factory != original["factory"]:
        raise ValueError(f"factory {config.factory!r} differs from quantizer_from's {original['factory']!r}: a "
                         "reused quantizer keeps its factory (leave factory out, or rebuild in full)")
    dim = _dim(storage, config.run)
    if dim != original["dim"]:
        raise ValueError(f"the run's embeddings have {dim} dimensions, quantizer_from's index {original['dim']}: "
                         "it was trained for another encoder; build this index in full")
    layout = IndexLayout(config.index_root)
    if not storage.exists(layout.trained):
        storage.write_bytes(layout.trained, storage.read_bytes(source.trained))
    index = steps.from_bytes(storage.read_bytes(layout.trained))
    seed = original["config"]["seed"]
    now, then = _fit(storage, index, config.run, rows_per_part, original["train_sample"], seed), original.get(
        "quantizer_fit")
    if then is None:  # an index built before the fit was recorded: measure it on its run now
        old_run = original["source_run"]
        old_rows = [storage.parquet_rows(RunLayout(old_run).part("embeddings", p))
                    for p in range(read_manifest(storage, old_run)["counts"]["parts"])]
        then = _fit(storage, index, old_run, old_rows, original["train_sample"], seed)
    drift = {"residual_ratio": round(now["mean_residual"] / then["mean_residual"], 4),
             "imbalance_ratio": round(now["imbalance"] / then["imbalance"], 4)}
    drift["rebuild_advised"] = drift["residual_ratio"] > config.max_drift
    if drift["rebuild_advised"]:
        log.warning("the new vectors drifted from the reused quantizer: their mean squared distance to a centroid "
                    "is %.2fx the original run's (max_drift %.2f); recall will suffer, rebuild this index in full "
                    "(leave quantizer_from out)", drift["residual_ratio"], config.max_drift)
    else:
        log.info("reused the quantizer of %s: drift %.3fx in distance to centroids, %.3fx in list imbalance",
                 config.quantizer_from, drift["residual_ratio"], drift["imbalance_ratio"])
    return {"factory": original["factory"], "dim": dim, "nlist": original["nlist"],
            "train_sample": original["train_sample"], "faiss_gpus": steps.faiss_gpus(), "quantizer_fit": then,
            "refresh": {"quantizer_from": config.quantizer_from, "sample_fit": now, **drift}}


def _gpus_per_step(config: IndexBuildConfig, executor: Executor) -> int:
    """One GPU for each train and add step when use_gpu asks and the executor has GPUs now."""
    if not config.use_gpu:
        return 0
    if executor.gpus() >= 1:
        return 1
    log.warning("use_gpu: the cluster has no GPU now, so the index is trained and added on CPUs (on an "
                "autoscaling cluster, keep a GPU worker up while the build starts)")
    return 0


def build_index(config: IndexBuildConfig, executor: Executor | None = None, *,
                emit: Callable[[str], None] = log.info, bar: bool = False) -> dict[str, Any]:
    """Build (or resume building) the index `config` describes; returns its manifest. Progress of the add
    step goes to `emit` (or a bar on a terminal)."""
    executor = executor or LocalExecutor()
    config = config.model_copy(update={"storage": Storage(config.storage).resolved()})
    storage = Storage(config.storage)
    started = time.perf_counter()
    run_manifest = read_manifest(storage, config.run)
    if run_manifest.get("status") != "complete":
        raise ValueError(f"{config.run} is not a finished indexing run (status {run_manifest.get('status')!r}); "
                         "rerun the indexing job to finish it first")
    pin_settings(storage, IndexLayout(config.index_root).settings,
                 config.model_dump(mode="json", include=OUTPUT_SETTINGS), config.index_root, "an index")
    parts = run_manifest["counts"]["parts"]
    rows_per_part = [storage.parquet_rows(RunLayout(config.run).part("embeddings", p)) for p in range(parts)]
    offsets = steps.part_offsets(rows_per_part)

    gpus = _gpus_per_step(config, executor)
    with_gpus = TaskOptions(cpus=1, gpus=gpus, label="train")
    [trained] = executor.get([executor.submit(train, storage, config, rows_per_part, options=with_gpus)])
    train_s = time.perf_counter() - started
    if gpus and not trained["faiss_gpus"]:
        log.warning("use_gpu: faiss on the GPU node has no GPU support (a faiss-cpu build; `pip install xdr[gpu]` "
                    "installs faiss-gpu), so the index is trained and added on CPUs")

    adding = [executor.submit(steps.add_part, storage, config.run, config.index_root, p, offsets[p], config.use_gpu,
                              options=TaskOptions(cpus=1, gpus=gpus, label="add")) for p in range(parts)]
    progress = Progress("add", sum(rows_per_part), parts, emit=emit, bar=bar)
    for part, _ in executor.as_completed(adding):
        progress.update(rows_per_part[part])
    add_s = time.perf_counter() - started - train_s

    plan = steps.shard_plan(rows_per_part, config.shards)
    shards = executor.get([executor.submit(steps.merge_shard, storage, config.run, config.index_root, s, plan_parts,
                                           offsets, config.with_text, options=TaskOptions(cpus=1, label="merge"))
                           for s, plan_parts in enumerate(plan)])
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
        "shards": shards,
        "code_version": code_version(),
        "config": config.model_dump(mode="json"),
        "timings": {"train_s": round(train_s, 3), "add_s": round(add_s, 3),
                    "total_s": round(time.perf_counter() - started, 3)},
        "finished_at": now(),
    }
    storage.write_bytes(IndexLayout(config.index_root).manifest, json.dumps(manifest, indent=2).encode())
    return manifest
