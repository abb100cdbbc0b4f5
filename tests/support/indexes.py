"""The index build job's sequence run in this process (xdr.index.builder with the local executor)."""

from __future__ import annotations

from xdr.config import IndexBuildConfig
from xdr.index.builder import build_index


def build_here(run: str, root: str, factory: str, shards: int, nprobe: int = 8) -> list[dict]:
    """Build `run`'s index into `root` as the build job does, without Ray; returns the shards' summaries."""
    config = IndexBuildConfig(run=run, output=root, factory=factory, shards=shards, nprobe=nprobe,
                              train_sample=20_000)
    return build_index(config, emit=lambda _: None)["shards"]
