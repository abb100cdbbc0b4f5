"""Where each stage's files live under a run folder. Names are deterministic: part-NNNNN.parquet."""

from __future__ import annotations

from dataclasses import dataclass

from xdr.storage import join

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
