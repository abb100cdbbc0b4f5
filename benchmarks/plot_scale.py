"""Plot bench_scale.py's JSON: each stage's time per 1,000 passages and each process kind's peak memory
against the corpus size (flat lines = linear cost and bounded memory).

    python benchmarks/plot_scale.py docs/results/data/bench-scale-2026-11-30.json \
        docs/results/data/bench-scale-2026-11-30.png

It also prints the tables of docs/results/benchmarks.md (Markdown).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _index_job(row: dict) -> dict:
    """The indexing job's CPU seconds and peak memory; for the size that was killed and rerun, both
    attempts together (CPU summed, memory the larger)."""
    job = row["index_job"]
    first = row.get("resume", {}).get("first_attempt")
    if not first:
        return job
    kinds = set(job["cpu_s"]) | set(first["cpu_s"])
    return {**job, "cpu_s": {k: job["cpu_s"].get(k, 0) + first["cpu_s"].get(k, 0) for k in kinds},
            "peak_rss_mib": {k: max(job["peak_rss_mib"].get(k, 0), first["peak_rss_mib"].get(k, 0)) for k in kinds}}


STAGE_TIMES = {  # label -> how to read its seconds from one size's results
    "validation": lambda r: r["resume"]["first_attempt_validation_s"] if "resume" in r
    else r["index_job"]["timings"]["prepare_s"],
    # the killed size: its first attempt after validation, plus the rerun (a second Ray start, parts skipped)
    "generate + embed (wall)": lambda r: r["resume"]["killed_after_s"] - r["resume"]["first_attempt_validation_s"]
    + r["resume"]["rerun_s"] if "resume" in r else r["index_job"]["timings"]["pipeline_s"],
    "index: train": lambda r: r["build"]["timings"]["train_s"],
    "index: add": lambda r: r["build"]["timings"]["add_s"],
    "index: merge": lambda r: r["build"]["timings"]["total_s"] - r["build"]["timings"]["train_s"]
    - r["build"]["timings"]["add_s"],
}
PROCESS_KINDS = {
    "index driver": ("index_job", "driver"), "validate_unit": ("index_job", "validate_unit"),
    "cut_unit": ("index_job", "cut_unit"),
    "generate actor": ("index_job", "MapWorker(MapBatches(GenerateQueriesStage))"),
    "embed actor": ("index_job", "MapWorker(MapBatches(EmbedPartStage))"), "add_part": ("build", "add_part"),
    "merge_shard": ("build", "merge_shard"), "build driver": ("build", "driver"),
}


def _value(fn, row):
    try:
        return fn(row)
    except (KeyError, TypeError):
        return None


def plot(results: dict, out: Path) -> None:
    sizes = [r for r in results["sizes"] if "build" in r]
    n = [r["passages"] for r in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for label, fn in STAGE_TIMES.items():
        points = [(x, v * 1000 / x) for x, r in zip(n, sizes) if (v := _value(fn, r)) is not None]
        if points:
            left.plot(*zip(*points), marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="passages", ylabel="seconds per 1,000 passages",
             title="time per passage by stage")
    left.legend(fontsize=8)
    for label, (job, kind) in PROCESS_KINDS.items():
        views = [_index_job(r) if job == "index_job" else r[job] for r in sizes]
        points = [(x, v["peak_rss_mib"][kind]) for x, v in zip(n, views) if kind in v["peak_rss_mib"]]
        if points:
            right.plot(*zip(*points), marker="o", label=label)
    replica = [(x, max(v for k, v in r["serve"]["peak_rss_mib"].items() if "IndexShard" in k))
               for x, r in zip(n, sizes) if "serve" in r]
    if replica:
        right.plot(*zip(*replica), marker="s", linestyle="--", label="serving replica")
    right.set(xscale="log", xlabel="passages", ylabel="peak RSS (MiB)", title="peak memory by process kind")
    right.legend(fontsize=8)
    fig.suptitle(f"xdr at scale, stand-in models ({results['machine']}, {results['date']})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)




def tables(results: dict) -> str:
    """Markdown: time per 1,000 passages by stage, peak memory by process kind, bytes and objects."""
    sizes = [r for r in results["sizes"] if "build" in r]
    head = "| stage | " + " | ".join(f"{r['passages']:,}" for r in sizes) + " |"
    rule = "|---|" + "---:|" * len(sizes)
    out = ["Seconds per 1,000 passages (wall time of each stage; CPU seconds of each kind of process):", "", head,
           rule]
    for label, fn in STAGE_TIMES.items():
        values = [_value(fn, r) for r in sizes]
        out.append(f"| {label} | " + " | ".join("-" if v is None else f"{v * 1000 / r['passages']:.4f}"
                                              for v, r in zip(values, sizes)) + " |")
    cpu = {"validation tasks (CPU)": ("index_job", ("validate_unit", "find_duplicates", "cut_unit", "assemble_part")),
           "generate actor (CPU)": ("index_job", ("MapWorker(MapBatches(GenerateQueriesStage))",)),
           "embed actor (CPU)": ("index_job", ("MapWorker(MapBatches(EmbedPartStage))",)),
           "index driver (CPU)": ("index_job", ("driver",)),
           "build tasks (CPU)": ("build", ("_train", "add_part", "merge_shard"))}
    for label, (job, kinds) in cpu.items():
        views = [_index_job(r) if job == "index_job" else r[job] for r in sizes]
        out.append(f"| {label} | " + " | ".join(
            f"{sum(v['cpu_s'].get(k, 0) for k in kinds) * 1000 / r['passages']:.4f}" for v, r in zip(views, sizes))
            + " |")
    out += ["", "Peak RSS (MiB) by process kind:", "", head, rule]
    for label, (job, kind) in PROCESS_KINDS.items():
        views = [_index_job(r) if job == "index_job" else r[job] for r in sizes]
        out.append(f"| {label} | " + " | ".join(str(v["peak_rss_mib"].get(kind, "-")) for v in views) + " |")
    out.append("| serving replica (IndexShard) | " + " | ".join(str(max(
        (v for k, v in r["serve"]["peak_rss_mib"].items() if "IndexShard" in k), default="-")) for r in sizes) + " |")
    out.append("| shard index + ids (MiB) | " + " | ".join(str(round(max(
        a + b for a, b in zip(r["build"]["shard_index_bytes"], r["build"]["shard_ids_bytes"])) / 2**20))
        for r in sizes) + " |")
    out += ["", "Written (MiB / objects):", "", head, rule]
    for stage in ("passages", "rejects", "queries", "embeddings"):
        out.append(f"| {stage} | " + " | ".join(
            f"{r['stages'][stage]['bytes'] / 2**20:,.0f} / {r['stages'][stage]['objects']:,}" for r in sizes) + " |")
    out.append("| index | " + " | ".join(f"{r['build']['bytes'] / 2**20:,.0f} / {r['build']['objects']:,}"
                                         for r in sizes) + " |")
    out += ["", "Serving (nprobe " + str(results["nprobe"]) + "):", "", head, rule]
    for clients in (1, 8):
        out.append(f"| p50 / p99 ms, {clients} client{'s' if clients > 1 else ''} | " + " | ".join(
            f"{r['serve'][f'clients_{clients}']['p50_ms']} / {r['serve'][f'clients_{clients}']['p99_ms']}"
            for r in sizes) + " |")
    out.append("| endpoint up (s) | " + " | ".join(str(r["serve"]["load_s"]) for r in sizes) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    plot(data, Path(sys.argv[2]))
    print(tables(data))
