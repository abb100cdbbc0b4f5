"""The index build job's sequence run in this process (xdr.index.builder with the local executor)."""

from __future__ import annotations

from xdr.config import IndexBuildConfig
from xdr.index.builder import build_index


def build_here(run: str, root: str, factory: str | None, shards: int, nprobe: int = 8, **fields) -> list[dict]:
    """Build `run`'s index into `root` as the build job does, without Ray; returns the shards' summaries."""
    return build_manifest(run, root, factory, shards, nprobe, **fields)["shards"]


def build_manifest(run: str, root: str, factory: str | None, shards: int, nprobe: int = 8, **fields) -> dict:
    """As build_here; returns the index manifest."""
    config = IndexBuildConfig(run=run, output=root, factory=factory, shards=shards, nprobe=nprobe,
                              train_sample=fields.pop("train_sample", 20_000), **fields)
    return build_index(config, emit=lambda _: None)
