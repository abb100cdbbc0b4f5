"""Code-switched training queries: lexical overlap ratio against retrieval quality and query latency (METHOD.md
§3, the seed's question).

    python benchmarks/derive_xquad_dictionary.py --out exp-output/dictionaries     # the dictionaries first
    python benchmarks/exp_codeswitch_xquad.py --dictionaries 'exp-output/dictionaries/*.txt' \
        --json docs/eval/codeswitch-xquad.json --md docs/eval/codeswitch-xquad.md --plot docs/eval/codeswitch-xquad.png

USE v3 fine-tuned with hybrid batches on XQuAD articles 1-28 (12 languages) exactly as the hybrid experiment,
with a share (`--ratios`) of each training query's words replaced on the fly by their dictionary translation
(xdr.train.codeswitch; ratio 0 = no switching); the dictionaries are derived from the same training
articles' questions (derive_xquad_dictionary.py). Evaluation: LAReQA mAP mono / cross / multi on XQuAD-R
articles 33-48. Latency: the trained model, merged and loaded as the indexing job and the endpoint load it,
encoding held-out questions one at a time on this machine's CPU (median and p95 of 300).
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import time
from pathlib import Path

import numpy as np
from xquad_runs import RunSettings, add_run_arguments, evaluate, inference_encoder, machine_line, mean_sd, train_use

from xdr.eval.datasets import load_lareqa
from xdr.storage import Storage
from xdr.train.codeswitch import CodeSwitcher, load_muse
from xdr.train.data import load_xquad
from xdr.train.samplers import HybridBatchSampler

METRICS = ("mono", "cross", "multi")


def switched_share(train, switcher: CodeSwitcher | None, batch_size: int) -> float:
    """The share of training-query words that one epoch's switching actually replaced (dictionaries cover
    only some words, and zh / th have none)."""
    if switcher is None:
        return 0.0
    plain = HybridBatchSampler([train], batch_size=batch_size, seed=0)
    switched = HybridBatchSampler([train], batch_size=batch_size, seed=0, transform=switcher)
    changed = total = 0
    for b in range(plain.batches_per_epoch):
        for a, s in zip(plain.global_batch(0, b), switched.global_batch(0, b)):
            before, after = re.findall(r"\w+", a.query), re.findall(r"\w+", s.query)
            total += len(before)
            changed += sum(x != y for x, y in zip(before, after)) if len(before) == len(after) else len(before)
    return changed / max(1, total)


def latency_ms(encoder, questions: list[str]) -> dict:
    times = []
    for q in questions:
        start = time.perf_counter()
        encoder.encode_queries([q])
        times.append((time.perf_counter() - start) * 1000)
    return {"median": float(np.median(times)), "p95": float(np.percentile(times, 95))}


def markdown(table: dict, args, machine: str) -> str:
    lines = [f"USE v3, hybrid batches, XQuAD articles 1-28 with code-switched queries ({args.steps} steps, batch "
             f"{args.batch_size}, {len(args.seeds)} seeds); LAReQA mAP on XQuAD-R articles 33-48 (mean ± sd over "
             f"seeds); latency: one query at a time, {machine}.", "",
             "| ratio | words switched | mAP mono | mAP cross | mAP multi | latency median ms | p95 ms |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for ratio, row in table.items():
        cells = " | ".join(f"{row[m]['mean']:.4f} ± {row[m]['sd']:.4f}" for m in METRICS)
        lines.append(f"| {ratio} | {row['switched_share']:.1%} | {cells} | {row['latency']['median']['mean']:.2f} | "
                     f"{row['latency']['p95']['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [float(r) for r in table]
    fig, (ax, lat) = plt.subplots(1, 2, figsize=(11, 3.8))
    for metric in METRICS:
        ax.errorbar(ratios, [table[r][metric]["mean"] for r in table], yerr=[table[r][metric]["sd"] for r in table],
                    marker="o", capsize=3, label=metric)
    ax.set_xlabel("code-switch ratio (share of query words asked)")
    ax.set_ylabel("mAP (XQuAD-R held-out articles)")
    ax.legend()
    ax.grid(alpha=0.3)
    lat.errorbar(ratios, [table[r]["latency"]["median"]["mean"] for r in table],
                 yerr=[table[r]["latency"]["median"]["sd"] for r in table], marker="o", capsize=3)
    lat.set_xlabel("code-switch ratio")
    lat.set_ylabel("ms per query (median, batch 1, CPU)")
    lat.set_ylim(bottom=0)
    lat.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--dictionaries", default="exp-output/dictionaries/*.txt")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5])
    parser.add_argument("--latency-queries", type=int, default=300)
    args = parser.parse_args()
    machine = machine_line()

    files = sorted(glob.glob(args.dictionaries))
    if not files:
        raise SystemExit(f"no dictionary matches {args.dictionaries}: run derive_xquad_dictionary.py first")
    dictionary = load_muse(Storage(), files)
    storage = Storage()
    train, _ = load_xquad(storage, str(args.xquad), articles=range(1, 29))
    val, _ = load_xquad(storage, str(args.xquad), articles=range(29, 33))
    held_out = load_lareqa(args.xquad_r, articles=range(33, 49))
    rng = np.random.default_rng(0)
    timing_questions = [q.text for x in held_out.languages for q in held_out.questions[x]]
    timing_questions = [timing_questions[i] for i in rng.choice(len(timing_questions), args.latency_queries,
                                                                replace=False)]
    print(f"{len(files)} dictionaries, {sum(len(v) for v in dictionary.entries.values())} entries; train "
          f"{len(train.items)} items x {len(train.languages)} languages", flush=True)
    table, runs = {}, {}
    for ratio in args.ratios:
        switcher = CodeSwitcher(dictionary, ratio, "queries") if ratio > 0 else None
        share = switched_share(train, switcher, args.batch_size)
        for seed in args.seeds:
            run = train_use(train, val, RunSettings(args.steps, args.batch_size, args.lr), seed=seed,
                            transform=switcher)
            encoder = inference_encoder(run.model)
            result = evaluate(encoder, held_out)
            latency = latency_ms(encoder, timing_questions)
            runs.setdefault(str(ratio), []).append({"seed": seed, "result": result, "latency_ms": latency,
                                                    "curve": run.curve, "seconds": run.seconds})
            print(f"ratio {ratio} seed {seed}: " + " ".join(f"{m} {result[m]['avg']:.4f}" for m in METRICS)
                  + f" latency {latency['median']:.2f} ms (p95 {latency['p95']:.2f}) switched {share:.1%} "
                  f"train {run.seconds:.0f}s val {run.curve}", flush=True)
        rows = runs[str(ratio)]
        table[str(ratio)] = {**{m: mean_sd(r["result"][m]["avg"] for r in rows) for m in METRICS},
                             "switched_share": share,
                             "latency": {k: mean_sd(r["latency_ms"][k] for r in rows) for k in ("median", "p95")}}
    text = markdown(table, args, machine)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(args).items()},
                                         "machine": machine, "dictionary_files": len(files), "table": table,
                                         "runs": runs}, indent=2, default=str))
    if args.md:
        args.md.write_text(text)
    if args.plot:
        plot(table, args.plot)


if __name__ == "__main__":
    main()
