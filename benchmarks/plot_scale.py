"""Plot bench_scale.py's JSON: each stage's time per 1,000 passages and each process kind's peak memory
against the corpus size (flat lines = linear cost and bounded memory).

    python benchmarks/plot_scale.py docs/bench-scale-2026-11-30.json docs/bench-scale-2026-11-30.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGE_TIMES = {  # label -> how to read its seconds from one size's results
    "validation": lambda r: r["resume"]["first_attempt_validation_s"] if "resume" in r
    else r["index_job"]["timings"]["prepare_s"],
    "generate + embed (wall)": lambda r: None if "resume" in r else r["index_job"]["timings"]["pipeline_s"],
    "generate (actor busy)": lambda r: r["index_job"]["timings"]["generate_busy_s"],
    "embed + fuse (actor busy)": lambda r: r["index_job"]["timings"]["embed_busy_s"],
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
        points = [(x, r[job]["peak_rss_mib"][kind]) for x, r in zip(n, sizes) if kind in r[job]["peak_rss_mib"]]
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


if __name__ == "__main__":
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
