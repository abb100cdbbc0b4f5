"""The index build job: a finished indexing run -> a sharded IVF(-PQ) FAISS index, its steps as Ray tasks.

    python -m ray_jobs.build_index --run=s3://bucket/run --shards=4
    ray job submit --working-dir . -- python -m ray_jobs.build_index --config cluster/build_index.yaml

The sequence (train on a sample, add each part, merge each shard, check, manifest) is the library's
(xdr.index.builder); this module runs it on Ray and prints its summary.
"""

from __future__ import annotations

import logging
from typing import Any

from ray_jobs.common import on_terminal, run_job
from ray_jobs.tasks import RayTasks
from xdr.config import IndexBuildConfig
from xdr.index import builder

log = logging.getLogger("xdr.build_index")


def build_index(config: IndexBuildConfig) -> dict[str, Any]:
    return builder.build_index(config, RayTasks(max_retries=2), emit=log.info, bar=on_terminal())


def format_summary(manifest: dict[str, Any]) -> str:
    sizes = ", ".join(f"{s['vectors']:,}" for s in manifest["shards"])
    refresh = manifest.get("refresh")
    trained = (f"quantizer of {refresh['quantizer_from']} (drift {refresh['residual_ratio']:.3f}x"
               f"{': rebuild in full advised' if refresh['rebuild_advised'] else ''})" if refresh
               else f"trained on {manifest['train_sample']:,} vectors")
    return (f"index:  {manifest['factory']} ({manifest['dim']}-d, inner product), {trained}, "
            f"nprobe {manifest['nprobe']}\n"
            f"shards: {len(manifest['shards'])} ({sizes} vectors; {manifest['vectors']:,} in all)\n"
            f"time:   {manifest['timings']['total_s']:.1f}s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_job("Build a sharded IVF-PQ index from an indexing run.", argv, IndexBuildConfig, build_index,
                   format_summary)


if __name__ == "__main__":
    main()
