"""The indexing job's sequence run in this process, without Ray: validation and the reuse match on the
library's local executor, then each part through the two model stages, as the job's actors run them."""

from __future__ import annotations

from xdr.config import IndexingJobConfig
from xdr.ingest.validation import validate_corpus
from xdr.io.manifest import begin_run, finish_run
from xdr.io.storage import Storage
from xdr.pipeline.reuse import ReuseSummary, prepare_reuse
from xdr.pipeline.stages import EmbedPartStage, GenerateQueriesStage


def index_here(config: IndexingJobConfig) -> tuple[ReuseSummary | None, list[dict]]:
    """Returns the reuse summary (None without reuse_from) and each part's stage summaries."""
    storage = Storage(config.storage)
    manifest = begin_run(storage, config)
    prepared = validate_corpus(storage, config.corpus, config.output, progress=lambda _: None)
    reuse = (prepare_reuse(storage, config, [p.passages for p in prepared.parts], progress=lambda _: None)
             if config.reuse_from else None)
    generate, embed = GenerateQueriesStage(config), EmbedPartStage(config)
    summaries = [{**generate.run_part(p.part), **embed.run_part(p.part)} for p in prepared.parts]
    finish_run(storage, config, manifest, counts={"parts": len(prepared.parts), "passages": prepared.passages,
                                                  "embeddings": prepared.passages})
    return reuse, summaries
