"""The alpha sweep of hybrid batching, plotted from the experiment's JSON files.

    python benchmarks/plot_hybrid_alpha.py docs/eval/hybrid-xquad.json docs/eval/hybrid-xquad-alpha.json \
        --png docs/eval/hybrid-xquad-alpha.png --md docs/eval/hybrid-xquad-alpha-sweep.md

alpha is the probability of an X-X-mono batch: alpha = 0 is X-Y batching and alpha = 1 is X-X-mono by
definition, so those points are the `xy` and `xx_mono` runs of the main experiment (same seeds, steps,
batch size; the hybrid sampler draws one extra random number per batch, so their batches are drawn from the
same distribution, not identical). Intermediate values are `hybrid alpha=...` runs (or `hybrid` = 0.5).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

METRICS = (("mono", "mAP mono"), ("cross", "mAP cross"), ("multi", "mAP multi"), ("language_bias", "language bias"))


def alpha_of(name: str) -> float | None:
    if name == "xy":
        return 0.0
    if name == "xx_mono":
        return 1.0
    if name == "hybrid":
        return 0.5
    found = re.fullmatch(r"hybrid alpha=([0-9.]+)", name)
    return float(found.group(1)) if found else None


def collect(files: list[Path]) -> tuple[dict[float, list[dict]], dict]:
    runs, zero_shot = {}, None
    for path in files:
        data = json.loads(path.read_text())
        zero_shot = zero_shot or data["zero_shot"]
        for name, results in data["runs"].items():
            alpha = alpha_of(name)
            if alpha is not None:
                runs.setdefault(alpha, []).extend(results)
    return dict(sorted(runs.items())), zero_shot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--md", type=Path)
    args = parser.parse_args()
    runs, zero_shot = collect(args.files)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    alphas = list(runs)
    rows = []
    for ax, (key, label) in zip(axes, METRICS):
        means = [np.mean([r[key]["avg"] for r in runs[a]]) for a in alphas]
        sds = [np.std([r[key]["avg"] for r in runs[a]], ddof=1) for a in alphas]
        ax.errorbar(alphas, means, yerr=sds, marker="o", capsize=3, label="fine-tuned (mean ± sd)")
        ax.axhline(zero_shot[key]["avg"], color="grey", ls="--", lw=0.8, label="zero-shot")
        ax.set_xlabel("alpha (share of X-X-mono batches)")
        ax.set_title(label)
        ax.set_xticks(alphas)
        ax.grid(alpha=0.3)
        rows.append((label, means, sds))
    axes[0].legend(fontsize=7)
    fig.suptitle("Hybrid batching on XQuAD (USE v3), LAReQA on held-out XQuAD-R articles 33-48", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    seeds = {a: len(r) for a, r in runs.items()}
    lines = [f"alpha sweep (seeds per point: {seeds}); alpha 0 = X-Y runs, 1 = X-X-mono runs", "",
             "| alpha | " + " | ".join(label for label, _, _ in rows) + " |", "|---:|" + "---:|" * len(rows)]
    for i, a in enumerate(alphas):
        lines.append(f"| {a:g} | " + " | ".join(
            f"{m[i]:.1f} ± {s[i]:.1f}" if label == "language bias" else f"{m[i]:.4f} ± {s[i]:.4f}"
            for label, m, s in rows) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
