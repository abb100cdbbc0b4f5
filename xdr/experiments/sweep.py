"""An experiment over encoder training settings, without Ray: its trials, each trial's training config and
evaluation, and the report that compares the settings over seeds. `ray_jobs/sweep.py` runs the trials as
Ray Tune trials (each one the train-encoder job on Ray Train).

A setting is a dict of train-encoder fields (dotted keys for nested ones: `lora.rank`, `code_switch.ratio`);
a trial is a setting and a seed. A trial's name is derived from its setting and seed, so that a rerun of the
same sweep finds the same folders: <output>/trials/<name>/ holds the trial's training run (model/,
checkpoints/, manifest.json) and its result.json, written last.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from xdr.config import RUN_NEUTRAL, SweepConfig, TrainEncoderConfig, apply_overrides
from xdr.io.storage import Storage
from xdr.uris import join

METRICS = {"lareqa": ("mono", "cross", "multi", "language_bias"), "miracl-yo": ("nDCG@10", "R@100", "MRR@10")}


@dataclass(frozen=True)
class Trial:
    name: str
    setting: dict[str, Any]  # without the seed
    seed: int

    @property
    def setting_name(self) -> str:
        return setting_name(self.setting)


def setting_name(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in setting.items()) or "base"


def _short(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")


def settings(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of the grid's values, crossed with each listed trial (fields that go together, such
    as a LoRA rank and its learning rate); a grid alone or trials alone are their own settings. In order, each
    distinct setting once."""
    keys = list(sweep.grid)
    grid = [dict(zip(keys, values)) for values in itertools.product(*(sweep.grid[k] for k in keys))]
    found = [{**listed, **combination} for listed in (sweep.trials or [{}]) for combination in grid]
    unique = []
    for setting in found:
        if setting not in unique:
            unique.append(setting)
    return unique


def trials(sweep: SweepConfig, storage: Storage | None = None) -> list[Trial]:
    storage = storage or Storage(sweep.storage)
    found = []
    for setting in settings(sweep):
        for seed in sweep.seeds:
            config = _training_config(sweep, setting, seed, ".", storage)
            found.append(Trial(trial_name(setting, seed, fingerprint(config, sweep)), setting, seed))
    return found


def fingerprint(config: TrainEncoderConfig, sweep: SweepConfig) -> str:
    """What a trial's figures depend on: its training config (not where it is written, nor the settings that
    change no result) and the evaluation. A sweep rerun with other `train` or `base` values gets new trials
    instead of reading results trained otherwise."""
    exclude = {"output", *RUN_NEUTRAL}
    return config.model_dump_json(exclude=exclude) + sweep.evaluation.model_dump_json()


def trial_name(setting: dict[str, Any], seed: int, config_fingerprint: str = "") -> str:
    """Readable and stable: the setting's values, cut short, and a digest of the setting, the seed and the
    fingerprint of everything else the trial's figures depend on."""
    text = json.dumps({"setting": setting, "seed": seed, "config": config_fingerprint}, sort_keys=True)
    ordered = dict(sorted(setting.items()))  # the same setting written in another order is the same trial
    slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", f"{setting_name(ordered)}_seed={seed}")[:80].strip("_")
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def trial_folder(sweep: SweepConfig, trial: Trial) -> str:
    return join(sweep.output, "trials", trial.name)


def trial_config(sweep: SweepConfig, trial: Trial, storage: Storage | None = None) -> TrainEncoderConfig:
    """The train-encoder config of one trial: `base`, then `train`, then the setting, the seed, the folder."""
    return _training_config(sweep, trial.setting, trial.seed, trial_folder(sweep, trial),
                            storage or Storage(sweep.storage))


def _training_config(sweep: SweepConfig, setting: dict, seed: int, output: str, storage: Storage) -> TrainEncoderConfig:
    data: dict[str, Any] = {}
    if sweep.base:
        data = yaml.safe_load(storage.read_bytes(sweep.base)) or {}
    overrides = {**sweep.train, **setting, "seed": seed, "output": output}
    data = apply_overrides(data, [f"{k}={_short(v)}" for k, v in overrides.items()])
    data.setdefault("storage", sweep.storage.model_dump(mode="json"))
    return TrainEncoderConfig.model_validate(data)


def evaluate_model(sweep: SweepConfig, config: TrainEncoderConfig, model_folder: str) -> dict[str, Any]:
    """The sweep's evaluation of one trained model: {metric: {language or 'avg': value}}."""
    from xdr.config import EncoderConfig
    from xdr.eval import datasets, experiments
    from xdr.models.encoder import make_encoder

    storage = Storage(sweep.storage)
    encoder = make_encoder(EncoderConfig(model=model_folder, pooling=config.pooling, normalize=config.normalize),
                           storage=storage)
    spec = sweep.evaluation
    if spec.kind == "lareqa":
        articles = range(spec.articles[0], spec.articles[1] + 1) if spec.articles else None
        result = experiments.lareqa_evaluate(datasets.load_lareqa(spec.path, articles=articles), encoder)
        return {m: {k: v for k, v in result[m].items() if k != "pairs"} for m in METRICS["lareqa"]}
    result = experiments.beir_evaluate(datasets.load_miracl_yo(spec.path), encoder)
    return {m: {"avg": float(v)} for m, v in result["metrics"].items() if m in METRICS["miracl-yo"]}


def summarise(sweep: SweepConfig, results: dict[str, dict]) -> dict[str, Any]:
    """results {trial name: result.json} -> per setting mean and sd over seeds, per language means, paired
    t-tests between settings over languages (or over seeds where there is one score per seed)."""
    from xdr.eval.metrics import paired_t_test

    metrics = METRICS[sweep.evaluation.kind]
    by_setting: dict[str, list[dict]] = {}
    for trial in trials(sweep):
        if trial.name in results:
            by_setting.setdefault(trial.setting_name, []).append(results[trial.name])
    table, per_language = {}, {}
    for name, runs in by_setting.items():
        table[name] = {m: _mean_sd([r["metrics"][m]["avg"] for r in runs]) | {"seeds": len(runs)} for m in metrics}
        table[name]["trainable_parameters"] = runs[0]["training"].get("trainable_parameters")  # the capacity
        languages = [k for k in runs[0]["metrics"][metrics[0]] if k != "avg"]
        per_language[name] = {m: {x: float(np.mean([r["metrics"][m][x] for r in runs])) for x in languages}
                              for m in metrics}
    names = list(by_setting)
    comparisons = max(1, len(names) * (len(names) - 1) // 2)
    tests = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            tests[f"{b} vs {a}"] = {m: _paired(per_language, by_setting, a, b, m, comparisons, paired_t_test)
                                    for m in metrics}
    groups = {name: {group: {m: float(np.mean([values[m][x] for x in members])) for m in metrics}
                     for group, members in sweep.evaluation.language_groups.items()}
              for name, values in per_language.items()}
    return {"metrics": list(metrics), "table": table, "per_language": per_language, "paired_tests": tests,
            "language_groups": groups,
            "settings": {name: dict(next(t.setting for t in trials(sweep) if t.setting_name == name))
                         for name in names}}


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def _paired(per_language, by_setting, a: str, b: str, metric: str, comparisons: int, test) -> dict:
    """Over the languages (per-language means over seeds) when there are two or more, else over seeds."""
    languages = sorted(per_language[a][metric])
    if len(languages) >= 2:
        xs, ys = ([per_language[s][metric][x] for x in languages] for s in (a, b))
        over = "languages"
    else:
        xs = [r["metrics"][metric]["avg"] for r in by_setting[a]]
        ys = [r["metrics"][metric]["avg"] for r in by_setting[b]]
        over = "seeds"
        if len(xs) != len(ys) or len(xs) < 2:
            return {"over": over, "p": None, "diff": float(np.mean(ys) - np.mean(xs))}
    result = test(xs, ys, comparisons=comparisons)
    corrected = result.p_bonferroni if result.p_bonferroni is not None else result.p
    return {"over": over, "p": result.p, "p_bonferroni": corrected, "diff": float(np.mean(ys) - np.mean(xs))}


def markdown(sweep: SweepConfig, summary: dict, command: str) -> str:
    metrics = summary["metrics"]
    lines = [f"Sweep `{sweep.output}`: {len(summary['table'])} settings x {len(sweep.seeds)} seeds, evaluation "
             f"{sweep.evaluation.kind} on `{sweep.evaluation.path}`"
             + (f" articles {sweep.evaluation.articles[0]}-{sweep.evaluation.articles[1]}"
                if sweep.evaluation.articles else "") + f" (mean ± sd over seeds). Command: `{command}`", "",
             "| setting | " + " | ".join(metrics) + " | seeds | trainable parameters |",
             "|---|" + "---:|" * (len(metrics) + 2)]
    for name, row in summary["table"].items():
        cells = [f"{row[m]['mean']:.4f} ± {row[m]['sd']:.4f}" for m in metrics]
        trainable = f"{row['trainable_parameters']:,}" if row.get("trainable_parameters") else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row[metrics[0]]['seeds']} | {trainable} |")
    if summary["paired_tests"]:
        lines += ["", "Paired t-tests (p, Bonferroni-corrected over the comparisons):", "",
                  "| comparison | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        for name, row in summary["paired_tests"].items():
            lines.append(f"| {name} | " + " | ".join(_p_cell(row[m]) for m in metrics) + " |")
    for group, members in sweep.evaluation.language_groups.items():
        lines += ["", f"Query languages {group} ({', '.join(members)}): mean of the per-language figures", "",
                  "| setting | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        for name, values in summary["language_groups"].items():
            lines.append(f"| {name} | " + " | ".join(f"{values[group][m]:.4f}" for m in metrics) + " |")
    first = metrics[0]
    languages = sorted({x for v in summary["per_language"].values() for x in v[first]})
    if len(languages) > 1:
        lines += ["", f"{first} per query language (mean over seeds):", "",
                  "| setting | " + " | ".join(languages) + " |", "|---|" + "---:|" * len(languages)]
        for name, values in summary["per_language"].items():
            lines.append(f"| {name} | " + " | ".join(f"{values[first].get(x, float('nan')):.4f}" for x in languages)
                         + " |")
    return "\n".join(lines) + "\n"


def _p_cell(test: dict) -> str:
    if test["p"] is None:
        return f"{test['diff']:+.4f} (no test)"
    return f"{test['diff']:+.4f} (p {test['p_bonferroni']:.3g}, over {test['over']})"


def numeric_axes(sweep: SweepConfig) -> list[str]:
    """Fields that take two or more numeric values across the settings: each gets a plot (metric against it)."""
    values: dict[str, set] = {}
    for setting in settings(sweep):
        for key, value in setting.items():
            values.setdefault(key, set()).add(value if isinstance(value, int | float) and not isinstance(value, bool)
                                              else None)
    return [k for k, found in values.items() if len(found) > 1 and None not in found]


def plot_lines(sweep: SweepConfig, summary: dict, axis: str, metric: str) -> dict[str, tuple[list, list]]:
    """{line label (the other grid fields): (axis values, metric means)} for one plot."""
    lines: dict[str, tuple[list, list]] = {}
    for name, setting in summary["settings"].items():
        if axis not in setting:
            continue
        label = setting_name({k: v for k, v in setting.items() if k != axis})
        xs, ys = lines.setdefault(label, ([], []))
        xs.append(setting[axis])
        ys.append(summary["table"][name][metric]["mean"])
    return {label: ([x for x, _ in sorted(zip(xs, ys))], [y for _, y in sorted(zip(xs, ys))])
            for label, (xs, ys) in lines.items()}
