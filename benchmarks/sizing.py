"""Sizing a run: what the non-model work costs per passage at the paper's recipe, and what 18M, 100M and
1B passages need, from bench_scale.py's measurements and the GPU stages' predicted rates.

    python benchmarks/sizing.py --scale docs/results/data/bench-scale-2026-11-30.json \
        --json docs/results/data/sizing-2026-11-30.json

1. Measured here, in this process, on one part of 10,000 synthetic passages: the generation and embedding
   stages' `run_part` at the paper's recipe (7 languages x 5 queries = 35 queries a passage) with the
   stand-in models, minus the stand-in models' own time on the same inputs = the stages' non-model CPU
   cost (Parquet reads and writes, query rows, fusion).
2. From the scale run (largest size): validation CPU seconds per passage (the validation tasks' measured
   CPU time), index-build CPU seconds per passage, bytes per passage of every output.
3. GPU rates: the predictions in docs/results/benchmarks.md (bench_gpu.py, not yet measured on a GPU): mT5-base
   generation 400 passages/s (x 35 queries) and mBERT encoding 15,000 passages/s and 50,000 queries/s per
   H100. Everything derived from them is a prediction.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GPU_GENERATE_PASSAGES_PER_S = 400  # per GPU, all 35 queries of a passage (prediction, docs/results/benchmarks.md)
GPU_ENCODE_PASSAGES_PER_S = 15_000
GPU_ENCODE_QUERIES_PER_S = 50_000
GPUS, CPUS_PER_GPU_NODE, GPUS_PER_NODE = 8, 96, 8  # one 8-GPU node (p4d/p5-like: 96 vCPUs)
QUERIES_PER_PASSAGE = 35
EMBEDDING_BYTES_768 = 768 * 4  # mBERT vectors as float32


def non_model_cost(passages: int = 10_000) -> dict:
    """Seconds per passage of the two stages' own work at 35 queries a passage (stand-in models' time
    taken out)."""
    from benchmarks.synthetic_corpus import _texts
    from xdr.config import IndexingJobConfig
    from xdr.io import schemas
    from xdr.io.layout import RunLayout
    from xdr.io.storage import Storage
    from xdr.pipeline.stages import EmbedPartStage, GenerateQueriesStage

    texts = _texts(0)
    rows = [{"id": f"p{i}", "title": f"Title {i}", "text": texts[i % len(texts)], "lang": "en"}
            for i in range(passages)]
    with tempfile.TemporaryDirectory() as run:
        table = pa.Table.from_pylist(rows).append_column(
            "digest", schemas.digests([r["title"] for r in rows], [r["text"] for r in rows]))
        Storage().write_table(RunLayout(run).part("passages", 0), table.select(schemas.PASSAGES.names)
                              .cast(schemas.PASSAGES))
        config = IndexingJobConfig.model_validate({
            "output": run, "corpus": {"path": run},
            "generator": {"model": "stand-in:lead-words", "languages": ["ar", "bn", "fi", "ja", "ko", "ru", "te"],
                          "queries_per_language": 5},
            "encoder": {"model": "stand-in:hashing-64"}, "fusion": {"alpha": 0.01}})
        generate, embed = GenerateQueriesStage(config), EmbedPartStage(config)
        t = time.perf_counter()
        generate.run_part(0)
        generate_s = time.perf_counter() - t
        t = time.perf_counter()
        embed.run_part(0)
        embed_s = time.perf_counter() - t
        queries = Storage().read_table(RunLayout(run).part("queries", 0))
        t = time.perf_counter()
        generate.generator.generate(rows)
        stand_in_generate_s = time.perf_counter() - t
        t = time.perf_counter()
        embed.encoder.encode_passages([r["title"] for r in rows], [r["text"] for r in rows])
        embed.encoder.encode_queries(queries["text"].to_pylist())
        stand_in_encode_s = time.perf_counter() - t
    return {"passages": passages, "queries": queries.num_rows,
            "generate_stage_s": round(generate_s, 3), "stand_in_generator_s": round(stand_in_generate_s, 3),
            "embed_stage_s": round(embed_s, 3), "stand_in_encoder_s": round(stand_in_encode_s, 3),
            "non_model_s_per_passage": (generate_s - stand_in_generate_s + embed_s - stand_in_encode_s) / passages}


VALIDATION_TASKS = ("validate_unit", "find_duplicates", "cut_unit", "assemble_part")


def validation_cpu_s(row: dict) -> float:
    """The validation tasks' CPU seconds, as the process sampler measured them in the attempt that validated
    (the first one, for a size that was killed and rerun); without them, its wall time on both CPUs (an upper
    bound: the CPUs are not busy all the time)."""
    for attempt in (row.get("resume", {}).get("first_attempt", {}), row["index_job"]):
        measured = [attempt.get("cpu_s", {}).get(task) for task in VALIDATION_TASKS]
        if all(v is not None for v in measured):
            return sum(measured)
    wall = row.get("resume", {}).get("first_attempt_validation_s") or row["index_job"]["timings"]["prepare_s"]
    return wall * 2


def project(scale: dict, cost: dict) -> dict:
    big = max((r for r in scale["sizes"] if "build" in r), key=lambda r: r["passages"])
    n = big["passages"]
    validate_cpu = validation_cpu_s(big) / n
    build_cpu = sum(v for k, v in big["build"]["cpu_s"].items() if k in ("_train", "add_part", "merge_shard")) / n
    gpu_s_per_passage = (1 / GPU_GENERATE_PASSAGES_PER_S + 1 / GPU_ENCODE_PASSAGES_PER_S
                         + QUERIES_PER_PASSAGE / GPU_ENCODE_QUERIES_PER_S)
    stage_cpu = cost["non_model_s_per_passage"]
    # the GPU stages' own CPU work runs on the node's CPUs beside the GPUs: time added if not overlapped
    cpus_per_gpu = CPUS_PER_GPU_NODE / GPUS_PER_NODE
    added = stage_cpu / cpus_per_gpu / gpu_s_per_passage
    per_passage_bytes = {k: v["bytes"] / n for k, v in big["stages"].items()}
    per_passage_bytes["queries_at_35"] = per_passage_bytes["queries"] * QUERIES_PER_PASSAGE  # 1 query a passage here
    per_passage_bytes["embeddings_768d"] = EMBEDDING_BYTES_768 + 16  # + id and count
    plan = {}
    for size in (18_000_000, 100_000_000, 1_000_000_000):
        gpu_hours = size * gpu_s_per_passage / 3600
        plan[size] = {
            "gpu_hours_predicted": round(gpu_hours, 1),
            "wall_hours_on_8_gpus_predicted": round(gpu_hours / GPUS, 1),
            "validation_cpu_hours": round(size * validate_cpu / 3600, 1),
            "validation_wall_min_on_64_cpus": round(size * validate_cpu / 64 / 60, 1),
            "index_build_cpu_hours": round(size * build_cpu / 3600, 1),
            "s3_bytes_gb": {"passages": round(size * per_passage_bytes["passages"] / 1e9, 1),
                            "queries (35 a passage)": round(size * per_passage_bytes["queries_at_35"] / 1e9, 1),
                            "embeddings (768-d float32)": round(size * per_passage_bytes["embeddings_768d"] / 1e9, 1)},
            "s3_objects": {"parts (10,000 passages)": -(-size // 10_000) * 4,
                           "staging during validation (64 MiB units)": "about 2 per 64 MiB of corpus"},
        }
    return {"measured_at": n, "non_model_stage_cpu_s_per_passage_at_35_queries": stage_cpu,
            "validation_cpu_s_per_passage": validate_cpu, "build_cpu_s_per_passage": build_cpu,
            "gpu_s_per_passage_predicted": gpu_s_per_passage, "cpus_per_gpu_assumed": cpus_per_gpu,
            "non_model_time_added_to_gpu_stages": round(added, 4), "bytes_per_passage": per_passage_bytes,
            "plan": plan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=Path, required=True, help="bench_scale.py's JSON")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--stage-passages", type=int, default=10_000, help="passages of the stage-cost part")
    parser.add_argument("--stage-cost-from", type=Path, default=None,
                        help="reuse the stage cost of an earlier sizing JSON instead of measuring it again")
    args = parser.parse_args()
    cost = (json.loads(args.stage_cost_from.read_text())["stage_cost"] if args.stage_cost_from
            else non_model_cost(args.stage_passages))
    result = {"stage_cost": cost, **project(json.loads(args.scale.read_text()), cost)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
