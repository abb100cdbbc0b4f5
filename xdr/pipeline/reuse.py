"""A new corpus version costs only what changed: a passage whose id, title and text are the same as in an
earlier run takes its generated queries from that run when the generator settings are the same, and its
fused embedding too when the encoder, fusion and stored type are the same. Only the rest reaches the models.

1. `reuse_sources`: what each earlier run (`reuse_from`) can give, from its manifest.
2. `write_keys` (a task per part, of this run and of every usable source): each passage's id, a digest of
   its title and text, and where it is (part, row), cut by hash partition of the id (xdr.io.partitioned).
3. `match_partition` (a task per partition): this run's keys against each source's, in the listed order;
   the first source with the same id and the same digest gives the passage, wherever it lay there (another
   file, another part). Memory: one partition's keys. The matches go out with a row group per part.
4. `write_plan` (a task per part): its matches by row, to reuse/part-N.parquet, which the model stages
   read (`ReusePlan`). The counts are committed once to reuse.json: a rerun reads it and matches nothing again.

Passages are matched by id, not by digest alone: the generator's random draws are keyed by the passage id
(xdr.models.generator), so the same text under another id gets other queries.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xdr.config import IndexingJobConfig
from xdr.executor import Executor, LocalExecutor
from xdr.io import schemas
from xdr.io.layout import RunLayout
from xdr.io.manifest import describe_model, output_settings, read_manifest
from xdr.io.partitioned import partition_of, read_groups, write_partitioned
from xdr.io.storage import Storage
from xdr.uris import join

KEYS = pa.schema([("id", pa.string()), ("digest", pa.binary(16)), ("part", pa.int32()), ("row", pa.int32())])
MATCHES = pa.schema([("part", pa.int32()), ("row", pa.int32()), ("source", pa.int16()),
                     ("source_part", pa.int32()), ("source_row", pa.int32()), ("embedding", pa.bool_())])
PLAN = pa.schema([f for f in MATCHES if f.name != "part"])
KEYS_PER_PARTITION = 500_000  # a match task holds about this many keys of this run and as many of the sources

_QUERY_SECTIONS = ("generator",)
_EMBEDDING_SECTIONS = ("generator", "encoder", "fusion", "embedding_dtype")


@dataclass(frozen=True)
class ReuseSource:
    """An earlier run and what this run may take from it."""

    run: str
    queries: bool
    embeddings: bool
    parts: int
    differs: list[str] = field(default_factory=list)  # the settings that keep it from giving more
    passages: int = 0

    def describe(self) -> str:
        gives = "queries and embeddings" if self.embeddings else "queries" if self.queries else "nothing"
        return f"{self.run}: {gives}" + (f" ({', '.join(self.differs)} differ)" if self.differs else "")


@dataclass
class ReuseSummary:
    sources: list[ReuseSource]
    passages: int  # of this run
    reused_queries: int = 0  # passages whose queries come from a source
    reused_embeddings: int = 0  # ... and whose embedding does too
    changed: int = 0  # ids a source holds with another title or text
    added: int = 0  # ids no source holds
    dropped: int = 0  # ids the sources hold that this run does not
    partitions: int = 0

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if isinstance(v, int) and k != "partitions"}

    def describe(self) -> str:
        return (f"reuse: {self.reused_embeddings:,} of {self.passages:,} passages take queries and embedding "
                f"from earlier runs, {self.reused_queries - self.reused_embeddings:,} only their queries; "
                f"{self.changed:,} changed, {self.added:,} new, {self.dropped:,} dropped")


def _differences(old: dict[str, Any], new: dict[str, Any], sections: Sequence[str]) -> list[str]:
    return [s for s in sections if old.get(s) != new.get(s)]


def reuse_sources(storage: Storage, config: IndexingJobConfig) -> list[ReuseSource]:
    """What each `reuse_from` run can give. Raises ValueError for a folder that is no finished run."""
    settings = output_settings(config)
    models = {"generator": describe_model(config.generator.model, config.generator.revision),
              "encoder": describe_model(config.encoder.model, config.encoder.revision)}
    sources = []
    for run in config.reuse_from:
        manifest = read_manifest(storage, run)
        if manifest.get("status") != "complete":
            raise ValueError(f"reuse_from {run!r} is not a finished run (status {manifest.get('status')!r}); "
                             "finish it first (rerun its command) or leave it out")
        old_settings, old_models = manifest.get("settings", {}), manifest.get("models", {})
        differs = _differences(old_settings, settings, _EMBEDDING_SECTIONS)
        differs += [f"{m} model files" for m in ("generator", "encoder") if old_models.get(m) != models[m]]
        if manifest.get("config", {}).get("queries_from"):
            differs.append("queries_from (its queries came from another run)")
        queries = not any(d.startswith(("generator", "queries_from")) for d in differs)
        sources.append(ReuseSource(run, queries, queries and not differs, int(manifest["counts"]["parts"]), differs,
                                   int(manifest["counts"]["passages"])))
    return sources


# --- files under the run's _reuse/ staging folder ----------------------------------------------------
def _staging(run_uri: str) -> str:
    return join(run_uri, "_reuse")


def keys_uri(run_uri: str, source: int | None, part: int) -> str:
    """The keys of a part of this run (source None) or of source number `source`."""
    owner = "run" if source is None else f"source-{source:03d}"
    return join(_staging(run_uri), "keys", owner, f"part-{part:05d}.parquet")


def matches_uri(run_uri: str, partition: int) -> str:
    return join(_staging(run_uri), "matches", f"partition-{partition:05d}.parquet")


# --- the steps ----------------------------------------------------------------------------------------
def write_keys(storage: Storage, run_uri: str, part: int, partitions: int, out_uri: str) -> list[int]:
    """A part's passage keys by hash partition of the id; returns the keys in each partition. The digests are
    read from the part (written by validation), or worked out from title and text for a run written before."""
    uri = RunLayout(run_uri).part("passages", part)
    if "digest" in storage.read_schema(uri).names:
        passages = storage.read_table(uri, columns=["id", "digest"])
        digests = passages["digest"]
    else:
        passages = storage.read_table(uri, columns=["id", "title", "text"])
        digests = schemas.digests(passages["title"].to_pylist(), passages["text"].to_pylist())
    ids = passages["id"].to_pylist()
    table = pa.table({"id": passages["id"], "digest": digests,
                      "part": pa.array(np.full(len(ids), part, np.int32)),
                      "row": pa.array(np.arange(len(ids), dtype=np.int32))}, schema=KEYS)
    return write_partitioned(storage, out_uri, table, partition_of(ids, partitions), partitions, KEYS)


@dataclass(frozen=True)
class PartitionMatch:
    counts: dict[str, int]
    rows_per_part: list[int]  # matches in each part of this run


def match_partition(storage: Storage, run_uri: str, partition: int, run_sizes: list[list[int]],
                    sources: list[tuple[int, bool, list[list[int]]]], parts: int) -> PartitionMatch:
    """This run's keys in one partition against the sources' (number, embeddings reusable, key sizes)."""
    new = read_groups(storage, [keys_uri(run_uri, None, p) for p in range(len(run_sizes))], run_sizes, partition,
                      KEYS)
    pending, found, source_ids = new, [], []
    for number, embeddings, sizes in sources:
        old = read_groups(storage, [keys_uri(run_uri, number, p) for p in range(len(sizes))], sizes, partition, KEYS)
        source_ids.append(old["id"])
        old = old.rename_columns(["id", "source_digest", "source_part", "source_row"])
        joined = pending.join(old, keys="id", join_type="inner")
        same = joined.filter(pc.equal(joined["digest"], joined["source_digest"]))
        found.append(pa.table({
            "part": same["part"], "row": same["row"],
            "source": pa.array(np.full(same.num_rows, number, np.int16)),
            "source_part": same["source_part"], "source_row": same["source_row"],
            "embedding": pa.array(np.full(same.num_rows, embeddings)),
        }, schema=MATCHES))
        pending = pending.filter(pc.invert(pc.is_in(pending["id"], value_set=same["id"])))
    matches = pa.concat_tables(found) if found else MATCHES.empty_table()
    all_source_ids = pa.chunked_array([c for ids in source_ids for c in ids.chunks], pa.string()).unique()
    known = pc.is_in(pending["id"], value_set=all_source_ids)
    counts = {
        "reused_queries": matches.num_rows,
        "reused_embeddings": int(pc.sum(matches["embedding"]).as_py() or 0),
        "changed": int(pc.sum(known).as_py() or 0),
        "added": pending.num_rows - int(pc.sum(known).as_py() or 0),
        "dropped": len(all_source_ids) - int(pc.sum(pc.is_in(all_source_ids, value_set=new["id"])).as_py() or 0),
    }
    rows = write_partitioned(storage, matches_uri(run_uri, partition), matches,
                             matches["part"].to_numpy(zero_copy_only=False).astype(np.int64), parts, MATCHES)
    return PartitionMatch(counts, rows)


def write_plan(storage: Storage, run_uri: str, part: int, match_sizes: list[list[int]]) -> int:
    """A part's matches from every partition, by row, to reuse/part-N.parquet; returns their number."""
    matches = read_groups(storage, [matches_uri(run_uri, b) for b in range(len(match_sizes))], match_sizes, part,
                          MATCHES)
    plan = matches.drop_columns(["part"]).sort_by("row")
    storage.write_table(RunLayout(run_uri).reuse_plan(part), plan.cast(PLAN))
    return plan.num_rows


def _partitions(keys: int) -> int:
    return max(1, min(4096, math.ceil(keys / KEYS_PER_PARTITION)))


def prepare_reuse(storage: Storage, config: IndexingJobConfig, passages_per_part: list[int],
                  executor: Executor | None = None, progress: Callable[[str], None] | None = None) -> ReuseSummary:
    """Match this run's passages with the `reuse_from` runs and write a plan per part; or read what an
    earlier attempt of this run committed."""
    executor, say = executor or LocalExecutor(), progress or print
    layout, run = RunLayout(config.output), config.output
    if storage.exists(layout.reuse):
        committed = json.loads(storage.read_bytes(layout.reuse))
        committed["sources"] = [ReuseSource(**s) for s in committed["sources"]]
        say("reuse plan committed by an earlier attempt")
        return ReuseSummary(**committed)

    sources = reuse_sources(storage, config)
    for source in sources:
        say(f"reuse from {source.describe()}")
    usable = [(i, s) for i, s in enumerate(sources) if s.queries]
    parts = len(passages_per_part)
    summary = ReuseSummary(sources, passages=sum(passages_per_part), added=sum(passages_per_part))
    if usable:
        storage.remove_tree(_staging(run))  # whatever a killed attempt staged
        source_passages = sum(s.passages for _, s in usable)
        summary.partitions = partitions = _partitions(summary.passages + source_passages)
        jobs = [(run, None, p) for p in range(parts)] + [(s.run, i, p) for i, s in usable for p in range(s.parts)]
        say(f"reuse: digesting {summary.passages:,} passages of this run and {source_passages:,} of "
            f"{len(usable)} earlier run(s), matching in {partitions} partitions")
        sizes = executor.get([executor.submit(write_keys, storage, folder, p, partitions, keys_uri(run, i, p))
                              for folder, i, p in jobs])
        run_sizes = sizes[:parts]
        by_source, start = [], parts
        for i, s in usable:
            by_source.append((i, s.embeddings, sizes[start:start + s.parts]))
            start += s.parts
        matched: list[PartitionMatch] = executor.get([
            executor.submit(match_partition, storage, run, b, run_sizes, by_source, parts) for b in range(partitions)])
        match_sizes = [m.rows_per_part for m in matched]
        executor.get([executor.submit(write_plan, storage, run, p, match_sizes) for p in range(parts)])
        for key in ("reused_queries", "reused_embeddings", "changed", "added", "dropped"):
            setattr(summary, key, sum(m.counts[key] for m in matched))
    committed = {**asdict(summary), "sources": [asdict(s) for s in sources]}
    storage.write_bytes(layout.reuse, json.dumps(committed, indent=1).encode())
    storage.remove_tree(_staging(run))
    say(summary.describe())
    return summary


# --- what the model stages read ---------------------------------------------------------------------
class ReusePlan:
    """A part's plan: which rows take their queries (and embedding) from which source's part and row."""

    def __init__(self, storage: Storage, config: IndexingJobConfig, part: int):
        self.storage, self.sources = storage, config.reuse_from
        uri = RunLayout(config.output).reuse_plan(part)
        self.table = storage.read_table(uri) if config.reuse_from and storage.exists(uri) else PLAN.empty_table()

    def rows(self, *, embeddings: bool = False) -> np.ndarray:
        """The part's rows that take their queries (or, with `embeddings`, their embedding) from a source."""
        table = self.table.filter(self.table["embedding"]) if embeddings else self.table
        return table["row"].to_numpy(zero_copy_only=False).astype(np.int64)

    def copy(self, stage: str, ids: pa.Array, *, embeddings: bool = False) -> pa.Table:
        """The sources' rows of `stage` ("queries" or "embeddings") for the planned rows, with a `_row` column
        (the row in this part of the passage each belongs to), in the sources' order. `ids`: the part's ids."""
        table = self.table.filter(self.table["embedding"]) if embeddings else self.table
        key = "passage_id" if stage == "queries" else "id"
        pieces = []
        groups = table.group_by(["source", "source_part"]).aggregate([]).to_pylist()
        for group in sorted(groups, key=lambda g: (g["source"], g["source_part"])):
            rows = table.filter(pc.and_(pc.equal(table["source"], group["source"]),
                                        pc.equal(table["source_part"], group["source_part"])))["row"]
            wanted = pc.take(ids, rows)
            source = RunLayout(self.sources[group["source"]]).part(stage, group["source_part"])
            found = self.storage.read_table(source)
            found = found.filter(pc.is_in(found[key], value_set=wanted))
            position = pc.index_in(found[key], value_set=wanted)
            pieces.append(found.append_column("_row", pc.take(rows, position).cast(pa.int64())))
        if not pieces:
            return pa.table({key: pa.array([], pa.string()), "_row": pa.array([], pa.int64())})
        return pa.concat_tables(pieces)


def in_row_order(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    """Tables with a `_row` column, as one table sorted by `_row`; rows of one `_row` keep their order."""
    pieces = [t.select(schema.names + ["_row"]).cast(pa.schema(list(schema) + [pa.field("_row", pa.int64())]))
              for t in tables if t.num_rows]
    if not pieces:
        return schema.empty_table()
    whole = pa.concat_tables(pieces)
    whole = whole.append_column("_seq", pa.array(np.arange(whole.num_rows, dtype=np.int64)))
    return whole.sort_by([("_row", "ascending"), ("_seq", "ascending")]).select(schema.names)

