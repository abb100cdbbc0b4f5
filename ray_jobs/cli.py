"""The `xdr` command: one subcommand per job.

    xdr demo                      build tiny offline models and index the sample corpus on a local Ray
    xdr index --config FILE ...   the indexing job (same as python -m ray_jobs.index_corpus)
    xdr build-tiny-models DIR     the offline test/demo models
    xdr config-reference          every config field with its default and meaning (Markdown)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "xdr" / "data" / "demo.yaml"


def _demo(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="xdr demo", description="Index the shipped sample corpus offline.")
    parser.add_argument("--output", default="demo-output", help="folder for the models and the run")
    parser.add_argument("--resume", action="store_true", help="keep an earlier demo run and resume it")
    args = parser.parse_args(argv)

    from ray_jobs import index_corpus
    from xdr import tiny_models
    from xdr.config import IndexingJobConfig

    out = Path(args.output).resolve()
    run_dir = out / "run"
    if run_dir.exists() and not args.resume:
        shutil.rmtree(run_dir)
    models = tiny_models.build_tiny_models(out / "models")
    data = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    data["output"] = str(run_dir)
    data["corpus"]["path"] = str(tiny_models.SAMPLE_CORPUS)
    data["generator"]["model"] = str(models["generator"])
    data["encoder"]["model"] = str(models["encoder"])
    config = IndexingJobConfig.model_validate(data)

    import ray

    index_corpus.setup_logging()
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never join a stale cluster
    try:
        manifest = index_corpus.run_indexing(config, progress_every_s=1.0)
    finally:
        ray.shutdown()
    print("\n" + index_corpus.format_summary(manifest))
    queries = pq.read_table(run_dir / "queries" / "part-00000.parquet").slice(0, 4).to_pylist()
    print("\nfirst generated queries (tiny random model: the words are noise, the plumbing is real):")
    for q in queries:
        print(f"  {q['passage_id']} [{q['lang']}#{q['qidx']}] {q['text'][:70]}")
    emb = pq.read_table(run_dir / "embeddings" / "part-00000.parquet")
    print(f"\nembeddings/part-00000.parquet: {emb.num_rows} rows, {emb.schema.field('embedding').type}")
    print(f"manifest: {run_dir / 'manifest.json'}")


def _config_reference(_: list[str]) -> None:
    from xdr.config import IndexingJobConfig

    print(config_reference(IndexingJobConfig))


def config_reference(model, prefix: str = "") -> str:
    """A Markdown table of every field: name, default, description."""
    from pydantic import BaseModel

    rows = ["| field | default | meaning |", "|---|---|---|"] if not prefix else []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.append(config_reference(annotation, f"{prefix}{name}."))
            continue
        default = "required" if field.is_required() else f"`{field.default!r}`"
        rows.append(f"| `{prefix}{name}` | {default} | {field.description or ''} |")
    return "\n".join(rows)


def _build_tiny_models(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="xdr build-tiny-models")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    from xdr.tiny_models import build_tiny_models

    for name, path in build_tiny_models(args.out_dir).items():
        print(f"{name}: {path}")


def _index(argv: list[str]) -> None:
    from ray_jobs.index_corpus import main as index_main

    index_main(argv)


COMMANDS = {"demo": _demo, "index": _index, "build-tiny-models": _build_tiny_models,
            "config-reference": _config_reference}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
