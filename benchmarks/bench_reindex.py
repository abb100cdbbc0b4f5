"""A new corpus version: what a reuse run (reuse_from) and an index refresh (quantizer_from) cost against a
full run and a full rebuild, side by side on one machine, with the benchmark stand-in models.

    python benchmarks/bench_reindex.py --passages 1000000 --workdir /tmp/xdr-reindex \\
        --json docs/results/data/bench-reindex-2026-12-02.json
    python benchmarks/bench_reindex.py --tiny        # 5,000 passages, about two minutes: what the tests run

1. Version 1 of a synthetic corpus (benchmarks/synthetic_corpus.py, as the scale benchmark's), and version 2
   made from it: 3 % of the passages edited, 2 % added, 1 % removed, 1 % moved to another file.
2. `python -m ray_jobs.index_corpus` on version 1; on version 2 from scratch ("full"); on version 2 with
   `reuse_from: [version 1's run]` ("reuse"). Each in its own process on a fresh local Ray, its processes'
   CPU time sampled by kind (benchmarks/bench_scale.py's Sampler). The reuse run's outputs must equal the
   full run's, part by part, byte for byte (the stand-ins' outputs are pure functions of a passage).
3. `python -m ray_jobs.build_index` on version 1; on version 2 in full ("rebuild"); on version 2 with
   `quantizer_from: [version 1's index]` ("refresh"). Recall@10 of each against exact search over version 2's
   embeddings, for questions made of passages' first words.
Results go to the JSON file after every stage; the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_scale import ENCODER, GENERATOR, _run_job  # noqa: E402
from benchmarks.synthetic_corpus import write_corpus, write_next_version  # noqa: E402

REUSE_TASKS = ("write_keys", "match_partition", "write_plan")
STAGE_ACTORS = ("GenerateQueriesStage", "EmbedPartStage")
PAPER_MODEL_MS = 3.27  # predicted GPU-ms a passage for the paper's recipe (docs/results/benchmarks.md)
JOB_OPTIONS: list[str] = []  # --address=... : every job joins that Ray (the tests'), instead of a fresh local one


LANGUAGES = ["fi", "ar", "ja", "ko", "ru", "te", "bn"]


def _index_config(corpus: Path, run: Path, part_size: int, reuse_from: Path | None, queries: tuple[int, int]) -> dict:
    config = {
        "output": str(run),
        "corpus": {"path": str(corpus), "max_reject_fraction": 0.5, "passages_per_part": part_size},
        "generator": {"model": GENERATOR, "languages": LANGUAGES[:queries[0]], "queries_per_language": queries[1]},
        "encoder": {"model": ENCODER},
        "fusion": {"alpha": 0.1},
        "resources": {"gpus_per_actor": 0, "cpus_per_actor": 1, "generator_actors": [1, 1], "encoder_actors": [1, 1]},
    }
    if reuse_from:
        config["reuse_from"] = [str(reuse_from)]
    return config


def _cpu(report: dict, names: tuple[str, ...]) -> float:
    return round(sum(v for k, v in report["cpu_s"].items() if any(n in k for n in names)), 1)


def index_run(name: str, corpus: Path, workdir: Path, part_size: int, queries: tuple[int, int],
              reuse_from: Path | None = None) -> dict:
    run = workdir / f"run-{name}"
    config_path = workdir / f"index-{name}.yaml"
    config_path.write_text(yaml.safe_dump(_index_config(corpus, run, part_size, reuse_from, queries)))
    report, seconds, _ = _run_job(["ray_jobs.index_corpus", "--config", str(config_path), *JOB_OPTIONS],
                                  workdir / f"log-{name}.txt")
    manifest = json.loads((run / "manifest.json").read_text())
    return {"wall_s": round(seconds, 1), "cpu_total_s": round(sum(report["cpu_s"].values()), 1),
            "cpu_reuse_tasks_s": _cpu(report, REUSE_TASKS), "cpu_stage_actors_s": _cpu(report, STAGE_ACTORS),
            **report, "counts": manifest["counts"], "reuse": manifest.get("reuse"), "timings": manifest["timings"]}


def outputs_equal(a: Path, b: Path) -> bool:
    """Every part of every stage, table by table (column types, values, order)."""
    for stage in ("passages", "rejects", "queries", "embeddings"):
        names = sorted(p.name for p in (a / stage).glob("part-*.parquet"))
        if names != sorted(p.name for p in (b / stage).glob("part-*.parquet")):
            return False
        if not all(pq.read_table(a / stage / n).equals(pq.read_table(b / stage / n)) for n in names):
            return False
    return True


def stand_in_model_ms(run: Path, queries: tuple[int, int]) -> float:
    """The stand-in models' own time a passage (generate 1 query, encode passage and query), on one part: the
    share of a full run's CPU that belongs to the models, not to the system around them."""
    from xdr.config import EncoderConfig, GeneratorConfig
    from xdr.models.encoder import make_encoder
    from xdr.models.generator import make_generator

    passages = pq.read_table(run / "passages" / "part-00000.parquet").to_pylist()
    generator = make_generator(GeneratorConfig(model=GENERATOR, languages=LANGUAGES[:queries[0]],
                                               queries_per_language=queries[1]))
    encoder = make_encoder(EncoderConfig(model=ENCODER))
    start = time.process_time()
    queries = generator.generate(passages)
    encoder.encode_passages([p["title"] for p in passages], [p["text"] for p in passages])
    encoder.encode_queries([q["text"] for q in queries])
    return 1000 * (time.process_time() - start) / len(passages)


def build(name: str, run: Path, workdir: Path, factory: str, shards: int, nprobe: int,
          quantizer_from: Path | None = None) -> dict:
    index = workdir / f"index-{name}"
    command = ["ray_jobs.build_index", f"--run={run}", f"--output={index}", f"--shards={shards}", f"--nprobe={nprobe}"]
    command += [f"--quantizer_from={quantizer_from}"] if quantizer_from else [f"--factory={factory}"]
    report, seconds, _ = _run_job(command + JOB_OPTIONS, workdir / f"log-build-{name}.txt")
    manifest = json.loads((index / "manifest.json").read_text())
    return {"wall_s": round(seconds, 1), "cpu_total_s": round(sum(report["cpu_s"].values()), 1),
            "timings": manifest["timings"], "vectors": manifest["vectors"], "refresh": manifest.get("refresh"),
            "quantizer_fit": manifest["quantizer_fit"], "index": str(index)}


def recall_at_10(index: str, run: Path, questions: int, nprobe: int) -> float:
    """Mean overlap of the index's top 10 with exact search's, for questions made of passages' first words."""
    from xdr.config import EncoderConfig
    from xdr.index.search import ExactSearcher, ShardedSearcher
    from xdr.models.encoder import make_encoder

    passages = pq.read_table(run / "passages", columns=["text"])["text"]
    rng = np.random.default_rng(0)
    texts = [" ".join(passages[int(i)].as_py().split()[:8]) for i in rng.choice(len(passages), questions, False)]
    vectors = make_encoder(EncoderConfig(model=ENCODER)).encode_queries(texts)
    exact = ExactSearcher(str(run)).search(vectors, k=10).ids
    got = ShardedSearcher(index).search(vectors, k=10, nprobe=nprobe).ids
    return round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])), 4)


def summarise(results: dict) -> None:
    """Ratios of the reuse run to the full run. The stand-in models' own CPU (measured apart) is taken out of
    both runs' CPU time to give their non-model CPU; the paper's recipe puts its predicted model time back."""
    full, reuse = results["index"]["full"], results["index"]["reuse"]
    n = full["counts"]["passages"]
    model_ms = results["stand_in_model_ms"]
    recomputed = reuse["counts"]["passages_encoded"] / n
    full_non_model = full["cpu_total_s"] - model_ms * n / 1000
    reuse_non_model = reuse["cpu_total_s"] - model_ms * reuse["counts"]["passages_encoded"] / 1000
    # the machinery: digests and match (the reuse tasks) plus what the stages spent beyond their share of
    # the full run's stage work for the passages they recomputed (copying the reused rows)
    machinery = reuse["cpu_reuse_tasks_s"] + max(0.0, reuse["cpu_stage_actors_s"]
                                                 - recomputed * full["cpu_stage_actors_s"])
    full_ms, reuse_ms = PAPER_MODEL_MS + 1000 * full_non_model / n, (recomputed * PAPER_MODEL_MS
                                                                     + 1000 * reuse_non_model / n)
    results["summary"] = {
        "model_calls_ratio": round((reuse["counts"]["passages_generated"] + reuse["counts"]["passages_encoded"])
                                   / (full["counts"]["passages_generated"] + full["counts"]["passages_encoded"]), 4),
        "wall_ratio": round(reuse["wall_s"] / full["wall_s"], 3),
        "cpu_ratio": round(reuse["cpu_total_s"] / full["cpu_total_s"], 3),
        "recomputed_fraction": round(recomputed, 4),
        "full_non_model_cpu_s": round(full_non_model, 1),
        "reuse_non_model_cpu_s": round(reuse_non_model, 1),
        "machinery_cpu_s": round(machinery, 1),
        "machinery_over_full_non_model": round(machinery / full_non_model, 3),
        "paper_recipe_full_ms_per_passage": round(full_ms, 3),
        "paper_recipe_reuse_ms_per_passage": round(reuse_ms, 3),
        "paper_recipe_reuse_over_full": round(reuse_ms / full_ms, 3),
    }


def table(results: dict) -> str:
    full, reuse = results["index"]["full"], results["index"]["reuse"]
    s = results.get("summary", {})
    lines = [f"{results['passages']:,} passages, version 2: {results['changes']}", "",
             "| indexing version 2 | wall s | CPU s | reuse tasks CPU s | stage actors CPU s | passages generated "
             "| passages encoded | queries encoded |", "|---|---|---|---|---|---|---|---|"]
    for name, row in (("full run", full), ("reuse run", reuse)):
        c = row["counts"]
        lines.append(f"| {name} | {row['wall_s']} | {row['cpu_total_s']} | {row['cpu_reuse_tasks_s']} | "
                     f"{row['cpu_stage_actors_s']} | {c['passages_generated']:,} | {c['passages_encoded']:,} | "
                     f"{c['queries_encoded']:,} |")
    if s:
        lines += ["", f"model calls {s['model_calls_ratio']:.2%} of the full run's; wall {s['wall_ratio']}x, CPU "
                  f"{s['cpu_ratio']}x; non-model CPU {s['reuse_non_model_cpu_s']} vs {s['full_non_model_cpu_s']} s; "
                  f"reuse machinery {s['machinery_cpu_s']} CPU s = {s['machinery_over_full_non_model']}x the full "
                  "run's non-model CPU; with the paper's recipe (predicted model time): "
                  f"{s['paper_recipe_reuse_ms_per_passage']} vs {s['paper_recipe_full_ms_per_passage']} ms a passage "
                  f"({s['paper_recipe_reuse_over_full']:.1%})"]
    if "build" in results:
        lines += ["", "| index for version 2 | wall s | train s | add s | total s (manifest) | recall@10 | drift |",
                  "|---|---|---|---|---|---|---|"]
        for name in ("rebuild", "refresh"):
            row = results["build"].get(name)
            if row:
                t, r = row["timings"], row.get("refresh") or {}
                lines.append(f"| {name} | {row['wall_s']} | {t['train_s']} | {t['add_s']} | {t['total_s']} | "
                             f"{row.get('recall_at_10', '-')} | {r.get('residual_ratio', '-')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--factory", default="IVF4096,PQ16np")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--languages", type=int, default=1, choices=range(1, len(LANGUAGES) + 1),
                        help="languages the stand-in generator writes for (7 x 5 = the paper's 35 queries)")
    parser.add_argument("--queries-per-language", type=int, default=1)
    parser.add_argument("--address", help="run every job on this Ray cluster (the CPU figures then miss its workers)")
    parser.add_argument("--tiny", action="store_true", help="5,000 passages, 2 files, parts of 500, IVF16,PQ8np, "
                        "100 questions")
    args = parser.parse_args()
    if args.tiny:
        args.passages, args.files, args.factory, args.questions = 5_000, 2, "IVF16,PQ8np", 100
    if args.address:
        JOB_OPTIONS.append(f"--address={args.address}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="xdr-bench-reindex-"))
    workdir.mkdir(parents=True, exist_ok=True)
    part_size = 500 if args.tiny else 1_000 if args.passages <= 20_000 else 10_000
    results: dict = {"machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
                                f"{psutil.virtual_memory().total / 2**30:.0f} GiB", "date": time.strftime("%Y-%m-%d"),
                     "encoder": ENCODER, "generator": GENERATOR, "passages": args.passages, "factory": args.factory,
                     "nprobe": args.nprobe, "tiny": args.tiny, "shared_ray": bool(args.address),
                     "languages": args.languages,
                     "queries_per_language": args.queries_per_language, "index": {}, "build": {}}
    queries = (args.languages, args.queries_per_language)

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    v1, v2 = workdir / "corpus-v1", workdir / "corpus-v2"
    if not (v1 / "_planted.json").exists():
        write_corpus(v1, args.passages, args.files, bad_every=min(50_000, max(10, args.passages // 40)))
    planted = (json.loads((v2 / "_planted.json").read_text()) if (v2 / "_planted.json").exists()
               else write_next_version(v1, v2))
    results["changes"] = planted["changes"]
    for name, corpus, source in (("v1", v1, None), ("full", v2, None), ("reuse", v2, workdir / "run-v1")):
        results["index"][name] = index_run(name, corpus, workdir, part_size, queries, source)
        save()
        print(f"indexed {name}: {results['index'][name]['wall_s']} s", flush=True)
    results["stand_in_model_ms"] = round(stand_in_model_ms(workdir / "run-full", queries), 4)
    results["checks"] = {"reuse_equals_full": outputs_equal(workdir / "run-reuse", workdir / "run-full")}
    summarise(results)
    save()

    for name, run, source in (("v1", "run-v1", None), ("rebuild", "run-full", None),
                              ("refresh", "run-full", workdir / "index-v1")):
        row = build(name, workdir / run, workdir, args.factory, args.shards, args.nprobe, source)
        if name != "v1":
            row["recall_at_10"] = recall_at_10(row["index"], workdir / run, args.questions, args.nprobe)
        results["build"][name] = row
        save()
        print(f"built {name}: {row['wall_s']} s", flush=True)
    print(json.dumps(results["checks"]))
    print(table(results))


if __name__ == "__main__":
    main()
