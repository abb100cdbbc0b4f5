"""The `xdr` command: one subcommand per job.

    xdr demo                      the whole flow offline on a local Ray: index the sample corpus, build the
                                  index, serve it on 127.0.0.1, ask questions in six languages over HTTP
    xdr index --config FILE ...   the indexing job (python -m ray_jobs.index_corpus)
    xdr build-index --run URI ... the index build job (python -m ray_jobs.build_index)
    xdr serve --index URI ...     the search endpoint on this machine's Ray (Ctrl-C stops it)
    xdr serve-switch --index URI  move the running endpoint to another index (same config), no request dropped
    xdr search QUESTION ...       ask a running endpoint
    xdr train-encoder --config F  train a dual encoder on Ray Train (python -m ray_jobs.train_encoder)
    xdr train-generator --config F  train the xQG query generator on Ray Train (ray_jobs.train_generator)
    xdr tune-index --eval.kind=K  factories x nprobe in the task metric, speed, memory (ray_jobs.tune_index)
    xdr evaluate KIND ...         metrics on XQuAD-R, XQuAD (oracle xQG), MIRACL-yo, BEIR-style sets
    xdr sweep --config FILE       an experiment over training settings x seeds as Ray Tune trials (ray_jobs.sweep)
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


DEMO_QUESTIONS = [
    "What is the highest mountain in Africa?",          # English
    "Wer hat das Penicillin entdeckt?",                 # German
    "Какая самая длинная река в Европе?",               # Russian
    "日本で一番高い山は何ですか？",                        # Japanese
    "한글은 언제 만들어졌습니까?",                          # Korean
    "ما هي أكبر صحراء حارة في العالم؟",                 # Arabic
]


def _demo(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="xdr demo", description="The whole flow, offline, on a local Ray.")
    parser.add_argument("--output", default="demo-output", help="folder for the models, the run and the index")
    parser.add_argument("--resume", action="store_true", help="keep an earlier demo run and resume it")
    parser.add_argument("--port", type=int, default=0, help="HTTP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own log lines on the terminal")
    args = parser.parse_args(argv)

    from ray import serve

    from ray_jobs import build_index, index_corpus, serve_app, serve_proxy
    from ray_jobs.common import free_port, job_session, quiet_ray_logs, ray_log_note, setup_logging
    from xdr import client
    from xdr.config import IndexBuildConfig, IndexingJobConfig, ServeConfig
    from xdr.models import tiny as tiny_models

    out = Path(args.output).resolve()
    run_dir = out / "run"
    if run_dir.exists() and not args.resume:
        shutil.rmtree(run_dir)
    models = tiny_models.build_tiny_models(out / "models")
    data = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    data["output"] = str(run_dir)
    data["corpus"]["path"] = str(tiny_models.SAMPLE_CORPUS)
    data["generator"]["model"] = str(models["generator"])
    config = IndexingJobConfig.model_validate(data)

    setup_logging()
    serve_proxy.configure_ingress("proxy")  # the demo's endpoint listens on loopback only
    # address "local": a fresh Ray, never a stale cluster's
    with job_session("demo", verbose=args.verbose, address="local", num_cpus=2, include_dashboard=False,
                     stop_hint="rerun with --resume to resume") as log_file:
        manifest = index_corpus.run_indexing(config, progress_every_s=1.0)
        print("\n" + index_corpus.format_summary(manifest))
        queries = pq.read_table(run_dir / "queries" / "part-00000.parquet").slice(0, 3).to_pylist()
        print("\nfirst generated queries (tiny random generator: the words are noise, the plumbing is real):")
        for q in queries:
            print(f"  {q['passage_id']} [{q['lang']}#{q['qidx']}] {q['text'][:70]}")

        index_manifest = build_index.build_index(IndexBuildConfig(run=str(run_dir), shards=2, nprobe=4))
        print("\n" + build_index.format_summary(index_manifest))

        port = args.port or free_port()
        url = serve_app.start(ServeConfig(index=str(run_dir / "index"), port=port, ingress="proxy",
                                          router_replicas=(1, 1), encoder_replicas=(1, 1), shard_replicas=(1, 1),
                                          replica_cpus=0.1), name="xdr-demo")
        if log_file:
            quiet_ray_logs(log_file)  # Serve adds console handlers of its own when it starts
        print(f"\nsearch endpoint on {url} (POST /search); questions over HTTP, top 3 each:\n")
        results = client.search(url, DEMO_QUESTIONS, k=3, return_text=True)
        for question, hits in zip(DEMO_QUESTIONS, results):
            print(client.format_hits(question, hits) + "\n")
        serve.shutdown()
        note = ray_log_note(log_file)
    print(f"run folder: {run_dir} (manifest.json, queries/, embeddings/, index/)")
    if note:
        print(note)


def _config_reference(_: list[str]) -> None:
    print(all_config_references())


def all_config_references() -> str:
    from xdr.config import (
        EvaluateConfig,
        IndexBuildConfig,
        IndexingJobConfig,
        ServeConfig,
        SweepConfig,
        TrainDataConfig,
        TrainEncoderConfig,
        TrainGeneratorConfig,
        TuneIndexConfig,
    )

    return "\n\n".join(f"### {title}\n\n{config_reference(model)}" for title, model in (
        ("Indexing job (`xdr index`, `ray_jobs.index_corpus`)", IndexingJobConfig),
        ("Index build job (`xdr build-index`, `ray_jobs.build_index`)", IndexBuildConfig),
        ("Search endpoint (`xdr serve`, `xdr serve-switch`, `ray_jobs.serve_app:app_builder`)", ServeConfig),
        ("Encoder training job (`xdr train-encoder`, `ray_jobs.train_encoder`)", TrainEncoderConfig),
        ("Generator training job (`xdr train-generator`, `ray_jobs.train_generator`)", TrainGeneratorConfig),
        ("Training data source (each item of `train` and `validation`)", TrainDataConfig),
        ("Index tuning job (`xdr tune-index`, `ray_jobs.tune_index`)", TuneIndexConfig),
        ("Training experiment (`xdr sweep`, `ray_jobs.sweep`)", SweepConfig),
        ("Evaluation job (`xdr evaluate`, `ray_jobs.evaluate`)", EvaluateConfig)))


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
    from xdr.models.tiny import build_tiny_models

    for name, path in build_tiny_models(args.out_dir).items():
        print(f"{name}: {path}")


def _index(argv: list[str]) -> None:
    from ray_jobs.index_corpus import main as index_main

    index_main(argv)


def _build_index(argv: list[str]) -> None:
    from ray_jobs.build_index import main as build_main

    build_main(argv)


def _serve(argv: list[str]) -> None:
    import signal

    import ray
    from ray import serve

    from ray_jobs import serve_app, serve_proxy
    from ray_jobs.common import job_session, parse_job_args, quiet_ray_logs, ray_log_note, run_preflight, setup_logging
    from xdr.config import ServeConfig

    setup_logging()
    args, config = parse_job_args("Serve a built index over HTTP.", argv, ServeConfig)
    if run_preflight(config, args):
        return
    serve_proxy.configure_ingress(config.ingress, config.retry_after_s)  # read by the Serve of a Ray started here
    ours = not ray.is_initialized()
    with job_session("serve", verbose=args.verbose, address=args.address,
                     stop_hint="the endpoint stopped before it served") as log_file:
        try:
            url = serve_app.start(config)
            if log_file:
                quiet_ray_logs(log_file)
            print(f"serving {config.index} on {url} (POST /search, GET /info, /healthz, /docs); Ctrl-C stops it",
                  flush=True)
            if log_file:
                print(ray_log_note(log_file), flush=True)
            stop = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # delivered to sigwait, not as KeyboardInterrupt
            received = signal.sigwait(stop)
            print(f"{signal.Signals(received).name}: stopping the endpoint", flush=True)
        finally:
            if not ours and ray.is_initialized():
                serve.shutdown()  # on a cluster, take the application down gracefully; a local Ray stops whole


def _serve_switch(argv: list[str]) -> None:
    import os
    import time

    from ray import serve

    from ray_jobs import serve_app
    from ray_jobs.common import job_session, parse_job_args, setup_logging
    from xdr.config import ServeConfig

    setup_logging()
    args, config = parse_job_args("Move the running endpoint (`xdr serve`, or the `xdr` application of `serve "
                                  "deploy`) to another index: give it the endpoint's config with the new index.",
                                  argv, ServeConfig)
    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"  # the running endpoint's Ray, never a new one
    with job_session("serve-switch", verbose=args.verbose, address=address):
        if "xdr" not in serve.status().applications:
            raise ValueError("no running xdr endpoint on this Ray cluster: start one with `xdr serve`")
        started = time.monotonic()
        version = serve_app.switch(config)
        print(f"switched to {config.index} (index version {version}) in {time.monotonic() - started:.1f}s: every "
              "replica serves it now", flush=True)


def _search(argv: list[str]) -> None:
    import os

    from xdr import client

    parser = argparse.ArgumentParser(prog="xdr search", description="Ask a running search endpoint.")
    parser.add_argument("questions", nargs="+")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--nprobe", type=int)
    parser.add_argument("--text", action="store_true", help="show titles and text")
    parser.add_argument("--token", default=os.environ.get("XDR_SERVE_TOKEN"), help="default: $XDR_SERVE_TOKEN")
    args = parser.parse_args(argv)
    try:
        results = client.search(args.url, args.questions, k=args.k, nprobe=args.nprobe, return_text=args.text,
                                token=args.token)
    except (client.SearchError, OSError) as err:
        sys.exit(f"error: {err}")
    for question, hits in zip(args.questions, results):
        print(client.format_hits(question, hits))


def _train_encoder(argv: list[str]) -> None:
    from ray_jobs.train_encoder import main as train_main

    train_main(argv)


def _train_generator(argv: list[str]) -> None:
    from ray_jobs.train_generator import main as train_main

    train_main(argv)


def _tune_index(argv: list[str]) -> None:
    from ray_jobs.tune_index import main as tune_main

    tune_main(argv)


def _sweep(argv: list[str]) -> None:
    from ray_jobs.sweep import main as sweep_main

    sweep_main(argv)


def _evaluate(argv: list[str]) -> None:
    from ray_jobs.evaluate import main as evaluate_main

    evaluate_main(argv)


COMMANDS = {"demo": _demo, "index": _index, "build-index": _build_index, "serve": _serve,
            "serve-switch": _serve_switch, "search": _search,
            "evaluate": _evaluate, "train-encoder": _train_encoder,
            "train-generator": _train_generator, "tune-index": _tune_index, "sweep": _sweep,
            "build-tiny-models": _build_tiny_models,
            "config-reference": _config_reference}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
