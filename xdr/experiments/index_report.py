"""The index tuning report: the result as Markdown (every point, the Pareto front, the recommendation
with its projected memory), the metric-vs-latency plot, the files written, the one-paragraph summary."""

from __future__ import annotations

import io
import json

import yaml

from xdr.experiments import index_tuning as tune
from xdr.io.storage import Storage
from xdr.uris import join


def markdown(result: dict) -> str:
    primary = result["primary"]
    measures = list(result["exact"])
    lines = [f"{result['eval']}: {result['documents']:,} documents ({result['dim']}-d), {result['queries']:,} "
             f"queries, depth {result['depth']}. Speed: one thread; q/s = all queries in one batch, p50/p99 = one "
             "query at a time. Δ = relative difference from exact search (Flat), p = paired t-test over queries.",
             "", "| index | nprobe | dtype | " + " | ".join(measures) + f" | Δ {primary} | p | q/s | p50 ms | p99 ms "
             "| bytes/vector | build s |", "|" + "---|" * (len(measures) + 10)]
    order = sorted(result["points"], key=lambda p: (p["dtype"], p["bytes_per_vector"], p["factory"], p["nprobe"] or 0))
    for p in order:
        vs = p.get("vs_exact", {}).get(primary, {"relative": 0.0, "p": 1.0})
        lines.append(f"| {p['factory']} | {p['nprobe'] or '-'} | {p['dtype']} | "
                     + " | ".join(f"{p['metrics'][m]:.4f}" for m in measures)
                     + f" | {vs['relative']:+.2%} | {vs['p']:.3g} | {p['queries_per_s']:,.0f} | {p['p50_ms']:.2f} | "
                     f"{p['p99_ms']:.2f} | {p['bytes_per_vector']:.1f} | {p['build_s']:.1f} |")
    rec = result["recommendation"]
    lines += ["", f"Pareto front (metric, p50, bytes): {', '.join(result['pareto'])}", ""]
    if rec:
        proj = rec["projection"]
        dtype_note = (" Its inputs are float16: index a run written with `embedding_dtype: float16`."
                      if rec["point"].endswith("(float16)") else "")
        lines += [f"**Recommendation** (within {result['max_loss']:.1%} of exact {primary}): {rec['point']}."
                  + dtype_note,
                  "", "```yaml", yaml.safe_dump(rec["build_config"], sort_keys=False).strip(), "```", "",
                  f"At {proj['vectors']:,} vectors: `{proj['factory']}`, nprobe {proj['nprobe']}, "
                  f"{proj['bytes'] / 2**30:.1f} GiB in all, {proj['bytes_per_shard'] / 2**30:.2f} GiB per shard "
                  f"over {proj['shards']} shards (codes + 8-byte ids + coarse quantizer; nprobe keeps its share "
                  "of the lists)."]
        chosen = next(p for p in result["points"] if tune.point_name(p) == rec["point"])
        per_language = result.get("exact_per_language", {}).get(primary, {})
        if len(per_language) > 1:
            lines += ["", f"{primary} per query language, exact search vs the recommendation:", "",
                      "| | " + " | ".join(per_language) + " |", "|---|" + "---:|" * len(per_language),
                      "| exact | " + " | ".join(f"{v:.4f}" for v in per_language.values()) + " |",
                      "| recommended | " + " | ".join(f"{chosen['per_language'][primary][x]:.4f}"
                                                     for x in per_language) + " |"]
    else:
        lines.append(f"No point is within {result['max_loss']:.1%} of exact search; keep Flat or widen the grid.")
    return "\n".join(lines) + "\n"


def plot(result: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = result["primary"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for dtype, marker in (("float32", "o"), ("float16", "^")):
        pts = [p for p in result["points"] if p["dtype"] == dtype]
        if pts:
            ax.scatter([p["p50_ms"] for p in pts], [p["metrics"][primary] for p in pts], marker=marker, alpha=0.6,
                       s=[10 + p["bytes_per_vector"] / 4 for p in pts], label=f"{dtype} inputs")
    front, best = [], float("-inf")  # the metric-vs-latency front (the listed front also weighs memory)
    for p in sorted(result["points"], key=lambda p: (p["p50_ms"], -p["metrics"][primary])):
        if p["metrics"][primary] > best:
            front.append(p)
            best = p["metrics"][primary]
    ax.plot([p["p50_ms"] for p in front], [p["metrics"][primary] for p in front], "k--", lw=0.8,
            label="best metric at this latency")
    ax.axhline(result["exact"][primary], color="grey", lw=0.8, label="exact search")
    ax.axhline((1 - result["max_loss"]) * result["exact"][primary], color="red", lw=0.8, ls=":",
               label=f"-{result['max_loss']:.0%} bound")
    ax.set_xscale("log")
    ax.set_xlabel("one-query latency p50 (ms, one thread)")
    ax.set_ylabel(primary)
    ax.set_title(f"{result['eval']}: {primary} vs latency (marker size = bytes/vector)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_report(output: str, storage: Storage, result: dict) -> None:
    storage.write_bytes(join(output, "result.json"), json.dumps(result, indent=2).encode())
    storage.write_bytes(join(output, "result.md"), markdown(result).encode())
    storage.write_bytes(join(output, "pareto.png"), plot(result))
    if result["recommendation"]:
        storage.write_bytes(join(output, "recommended-build.yaml"),
                            yaml.safe_dump(result["recommendation"]["build_config"], sort_keys=False).encode())


def format_summary(result: dict) -> str:
    rec = result["recommendation"]
    exact = result["exact"][result["primary"]]
    head = (f"tuned: {len(result['points'])} points over {result['documents']:,} documents; exact "
            f"{result['primary']} {exact:.4f}")
    if not rec:
        return head + f"\nno point within {result['max_loss']:.1%} of exact search"
    proj = rec["projection"]
    return (f"{head}\nrecommended (within {result['max_loss']:.1%}): {rec['point']}\n"
            f"at {proj['vectors']:,} vectors: {proj['factory']} nprobe {proj['nprobe']}, "
            f"{proj['bytes'] / 2**30:.1f} GiB ({proj['bytes_per_shard'] / 2**30:.2f} GiB per shard x "
            f"{proj['shards']})\n"
            f"report: {join(result['output'], 'result.md')}")


