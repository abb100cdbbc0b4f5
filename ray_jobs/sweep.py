"""The sweep job: an experiment over encoder training settings as Ray Tune trials.

    xdr sweep --config configs/sweep_batch_kinds_xquad.yaml
    ray job submit --working-dir . -- python -m ray_jobs.sweep --config ...

Every trial (a setting and a seed, xdr.experiments.sweep) is a Tune function trainable that runs the train-encoder job
(Ray Train, its own workers; Tune's TuneReportCallback carries the training metrics to the trial) and then the
sweep's evaluation of the best model, and writes <output>/trials/<name>/result.json. As many trials run at
once as the cluster holds with their Train workers (each: `cpus_per_trial` plus its workers), or
`max_concurrent_trials`.

Resuming: rerunning the same command restores Tune's experiment (Tuner.restore) and never trains a trial
whose result.json exists; an unfinished trial resumes from its Ray Train checkpoint (the training run's name
is derived from its config). A failed trial is retried `max_failures` times, then reported as failed. The
report (<name>.json, <name>.md, plots) is written from the trials' results after every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from ray_jobs import train_encoder
from ray_jobs.common import run_job
from ray_jobs.training import ray_storage
from xdr.config import SweepConfig, TrainEncoderConfig
from xdr.experiments import sweep as xsweep
from xdr.io.storage import Storage
from xdr.uris import join

log = logging.getLogger("xdr.sweep")


def result_uri(sweep: SweepConfig, trial: xsweep.Trial) -> str:
    return join(xsweep.trial_folder(sweep, trial), "result.json")


def trial_result(sweep: SweepConfig, trial: xsweep.Trial, config: TrainEncoderConfig,
                 callbacks: Sequence = ()) -> dict[str, Any]:
    """Train and evaluate one trial, or read its result when an earlier run finished it. `config` is the
    trial's training config as the driver resolved it (relative paths are the driver's: a Tune trial runs
    in a folder of its own)."""
    from xdr.io.manifest import code_version

    storage = Storage(sweep.storage)
    uri = result_uri(sweep, trial)
    if storage.exists(uri):
        return json.loads(storage.read_bytes(uri))
    manifest = train_encoder.run_training(config, callbacks=callbacks)
    started = time.perf_counter()
    metrics = xsweep.evaluate_model(sweep, config, manifest["model_folder"])
    evaluation_s = round(time.perf_counter() - started, 3)
    training = {k: manifest[k] for k in ("run_name", "steps", "best_step", "best_val_loss", "val_losses",
                                         "parameters", "trainable_parameters", "seconds", "resumed_at")}
    result = {"trial": trial.name, "setting": trial.setting, "seed": trial.seed, "metrics": metrics,
              "training": training, "evaluation_s": evaluation_s, "config": config.model_dump(mode="json"),
              "code_version": code_version()}
    storage.write_bytes(uri, json.dumps(result, indent=2).encode())  # last: its presence means done
    return result


def run_trial(params: dict) -> None:
    """Ray Tune's function trainable: one trial."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    sweep = SweepConfig.model_validate(params["sweep"])
    trial = xsweep.Trial(params["trial"]["name"], params["trial"]["setting"], params["trial"]["seed"])
    config = TrainEncoderConfig.model_validate(params["trial"]["config"])
    result = trial_result(sweep, trial, config, callbacks=[TuneReportCallback()])
    tune.report({f"eval_{m}": v["avg"] for m, v in result["metrics"].items()} | {"finished": True})


def concurrent_trials(sweep: SweepConfig, planned: list[xsweep.Trial], storage: Storage) -> int:
    """`max_concurrent_trials`, or as many trials as the cluster holds now with their Train workers. Tune
    alone would start a trial for every free `cpus_per_trial` and leave their workers no CPU (a deadlock)."""
    import math

    import ray

    if sweep.max_concurrent_trials:
        return sweep.max_concurrent_trials
    configs = [xsweep.trial_config(sweep, t, storage) for t in planned]
    cpus = sweep.cpus_per_trial + max(c.num_workers * c.cpus_per_worker for c in configs)  # the largest trial
    gpus = max(c.num_workers if c.use_gpu else 0 for c in configs)
    available = ray.cluster_resources()
    fits = math.floor(available.get("CPU", 0) / cpus + 1e-9)
    if gpus:
        fits = min(fits, math.floor(available.get("GPU", 0) / gpus + 1e-9))
    log.info("sweep: %d trials at once (each up to %.2g CPUs and %d GPUs; the cluster has %s CPUs, %s GPUs)",
             max(fits, 1), cpus, gpus, available.get("CPU", 0), available.get("GPU", 0))
    return max(fits, 1)


def _trial_folder_name(trial) -> str:
    """Tune's folder of a trial: the trial's own name (Tune's default spells out the whole config)."""
    return trial.config["trial"]["name"]


def run_sweep(sweep: SweepConfig) -> dict[str, Any]:
    from ray import tune

    storage = Storage(sweep.storage)
    planned = xsweep.trials(sweep)
    finished = [t for t in planned if storage.exists(result_uri(sweep, t))]
    log.info("sweep: %d trials (%d settings x %d seeds); %d finished before, %d to run", len(planned),
             len(planned) // len(sweep.seeds), len(sweep.seeds), len(finished), len(planned) - len(finished))
    # Tune's experiment is named by the trials it runs: the same sweep restores it; a changed one (more seeds,
    # another setting) starts a new experiment, and its trials that finished before are read, not trained.
    name = "tune-" + hashlib.sha256(json.dumps([t.name for t in planned]).encode()).hexdigest()[:12]
    tune_root = join(sweep.output, "tune")
    storage_kw = ray_storage(storage, tune_root)
    experiment = join(tune_root, name)
    trainable = tune.with_resources(run_trial, {"cpu": sweep.cpus_per_trial})
    fs = storage_kw.get("storage_filesystem")
    if tune.Tuner.can_restore(storage_kw["storage_path"] + "/" + name, storage_filesystem=fs):
        log.info("sweep: resuming Tune's experiment %s", experiment)
        tuner = tune.Tuner.restore(storage_kw["storage_path"] + "/" + name, trainable, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=fs)
    else:
        space = {"sweep": sweep.model_dump(mode="json"),
                 "trial": tune.grid_search([{"name": t.name, "setting": t.setting, "seed": t.seed,
                                             "config": xsweep.trial_config(sweep, t, storage).model_dump(mode="json")}
                                            for t in planned])}
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent_trials(sweep, planned, storage),
                                        trial_dirname_creator=_trial_folder_name),
            run_config=tune.RunConfig(name=name, failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                                      verbose=0, **storage_kw))
    grid = tuner.fit()
    trial_results = [grid[i] for i in range(len(grid))]
    failed = {(r.config or {})["trial"]["name"]: str(r.error).strip().splitlines()[-1][:300] for r in trial_results
              if r.error}
    results = {t.name: json.loads(storage.read_bytes(result_uri(sweep, t))) for t in planned
               if storage.exists(result_uri(sweep, t))}
    report = write_report(sweep, storage, results, failed)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(planned)} trials failed for good (report written without them): "
                           + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return report


def write_report(sweep: SweepConfig, storage: Storage, results: dict[str, dict], failed: dict[str, str]) -> dict:
    summary = xsweep.summarise(sweep, results)
    args = sys.argv[2:] if sys.argv[1:2] == ["sweep"] else sys.argv[1:]  # `xdr sweep ...` or `python -m ...`
    command = " ".join(["xdr sweep", *args])
    report = {"output": sweep.output, "sweep": sweep.model_dump(mode="json"), "trials": len(xsweep.trials(sweep)),
              "finished": sorted(results), "failed": failed, **summary,
              "validation_curves": {name: r["training"]["val_losses"] for name, r in results.items()},
              "trial_results": results}
    storage.write_bytes(join(sweep.output, f"{sweep.name}.json"), json.dumps(report, indent=2, default=str).encode())
    text = xsweep.markdown(sweep, summary, command)
    if failed:
        text += "\nFailed trials: " + ", ".join(sorted(failed)) + "\n"
    storage.write_bytes(join(sweep.output, f"{sweep.name}.md"), text.encode())
    for name, data in _plots(sweep, summary, results).items():
        storage.write_bytes(join(sweep.output, f"{sweep.name}-{name}"), data)
    return report


def _plots(sweep: SweepConfig, summary: dict, results: dict[str, dict]) -> dict[str, bytes]:
    """PNG bytes by file name: each metric against each numeric grid axis (a line per other setting), and every trial's
    validation curve."""
    import tempfile
    from pathlib import Path

    from xdr.eval.report import plot_curves

    plots = {}
    with tempfile.TemporaryDirectory() as folder:
        for axis in xsweep.numeric_axes(sweep):
            for metric in summary["metrics"]:
                path = Path(folder) / f"plot-{metric}-vs-{axis}.png".replace("@", "at")
                plot_curves(path, xsweep.plot_lines(sweep, summary, axis, metric), xlabel=axis, ylabel=metric,
                            title=f"{metric} against {axis} (mean over seeds)")
                plots[path.name] = path.read_bytes()
        curves = {name: ([s for s, _ in r["training"]["val_losses"]], [v for _, v in r["training"]["val_losses"]])
                  for name, r in results.items() if r["training"]["val_losses"]}
        if curves:
            path = Path(folder) / "validation-curves.png"
            plot_curves(path, curves, xlabel="step", ylabel="validation loss", title="Validation loss per trial")
            plots[path.name] = path.read_bytes()
    return plots


def format_summary(report: dict) -> str:
    metrics = report["metrics"]
    lines = [f"sweep:  {report['output']}  ({len(report['finished'])} of {report['trials']} trials finished)"]
    for name, row in report["table"].items():
        lines.append(f"  {name}: " + ", ".join(f"{m} {row[m]['mean']:.4f} ± {row[m]['sd']:.4f}" for m in metrics))
    lines.append(f"report: {join(report['output'], report['sweep']['name'] + '.md')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_job("Train and evaluate a grid of encoder settings as Ray Tune trials.", argv, SweepConfig, run_sweep,
                   format_summary)


if __name__ == "__main__":
    main()
