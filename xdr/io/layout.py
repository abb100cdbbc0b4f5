"""Where files live: each stage's parts under a run folder (deterministic names: part-NNNNN.parquet), and
an index's files under its folder (by default <run>/index, IndexBuildConfig.index_root)."""

from __future__ import annotations

from dataclasses import dataclass

from xdr.uris import join

STAGES = ("passages", "rejects", "queries", "embeddings")


def part_name(part: int) -> str:
    return f"part-{part:05d}.parquet"


@dataclass(frozen=True)
class RunLayout:
    root: str

    def part(self, stage: str, part: int) -> str:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        return join(self.root, stage, part_name(part))

    def folder(self, stage: str) -> str:
        return join(self.root, stage)

    @property
    def manifest(self) -> str:
        return join(self.root, "manifest.json")

    @property
    def validation(self) -> str:
        """What validation decided (parts, counts, the corpus files it read), committed once."""
        return join(self.root, "validation.json")

    def reuse_plan(self, part: int) -> str:
        """Which rows of a part take their queries (and embedding) from an earlier run (reuse_from)."""
        return join(self.root, "reuse", part_name(part))

    @property
    def reuse(self) -> str:
        """What the match with the earlier runs found (sources, counts), committed once."""
        return join(self.root, "reuse.json")


@dataclass(frozen=True)
class IndexLayout:
    """Files under <run>/index/."""

    root: str

    @property
    def trained(self) -> str:
        return join(self.root, "trained.faissindex")

    def partial(self, part: int) -> str:
        return join(self.root, "partials", f"part-{part:05d}.faissindex")

    def shard(self, shard: int) -> str:
        return join(self.root, f"shard-{shard:03d}.faissindex")

    def shard_docs(self, shard: int) -> str:
        return join(self.root, f"shard-{shard:03d}.docs.parquet")

    def shard_lookup(self, shard: int) -> str:
        """Passage id (and title, text) by row, for searchers to memory-map (Arrow IPC, uniform batches)."""
        return join(self.root, f"shard-{shard:03d}.lookup.arrow")

    @property
    def manifest(self) -> str:
        return join(self.root, "manifest.json")

    @property
    def settings(self) -> str:
        return join(self.root, "build-settings.json")
