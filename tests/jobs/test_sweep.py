"""`xdr sweep` (issue 19): the trials of a sweep config, the report's statistics against scipy and numbers
computed here, and a tiny sweep on a real local Ray (Tune trials running Ray Train): killed mid-sweep and
rerun, it trains only the unfinished trials, and each trial's figures equal the same config trained and
evaluated on its own."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from scipy import stats

from tests.support.jobs import run_and_sigkill_when
from tests.support.paths import REPO, SHARED_DATA
from xdr.config import SweepConfig
from xdr.experiments import sweep as xsweep

EVAL = {"kind": "lareqa", "path": str(SHARED_DATA / "xquad-r"), "articles": [33, 33]}


def _sweep(tmp_path, **fields) -> SweepConfig:
    data = {"train": [{"kind": "xquad", "path": str(SHARED_DATA / "xquad")}]}
    return SweepConfig.model_validate({"output": str(tmp_path / "sweep"), "evaluation": EVAL, "train": data, **fields})


def test_trials_are_the_grid_crossed_with_the_listed_settings_each_once_per_seed(tmp_path):
    sweep = _sweep(tmp_path, grid={"alpha": [0.25, 0.75]}, seeds=[0, 1, 2],
                   trials=[{"lora": {"rank": 4}, "lr": 5e-4}, {"lora": None}, {"lora": None, "alpha": 0.25}])
    planned = xsweep.trials(sweep)
    assert [t.setting for t in planned[::3]] == [
        {"lora": {"rank": 4}, "lr": 5e-4, "alpha": 0.25}, {"lora": {"rank": 4}, "lr": 5e-4, "alpha": 0.75},
        {"lora": None, "alpha": 0.25}, {"lora": None, "alpha": 0.75}]  # the third listed is the second's: once
    assert len(planned) == 12 and [t.seed for t in planned[:3]] == [0, 1, 2]
    assert len({t.name for t in planned}) == 12
    assert [t.name for t in xsweep.trials(sweep)] == [t.name for t in planned]  # stable across reruns
    alone = _sweep(tmp_path, trials=[{"batch_kind": "xy"}, {"batch_kind": "hybrid", "alpha": 0.5}])
    assert xsweep.settings(alone) == [{"batch_kind": "xy"}, {"batch_kind": "hybrid", "alpha": 0.5}]
    reordered = _sweep(tmp_path, trials=[{"alpha": 0.5, "batch_kind": "hybrid"}])
    assert xsweep.trials(reordered)[0].name == xsweep.trials(alone)[1].name  # shared by sweeps in one folder
    data = {"train": [{"kind": "xquad", "path": str(SHARED_DATA / "xquad")}]}
    longer = _sweep(tmp_path, trials=[{"batch_kind": "xy"}], train=data | {"steps": 500})
    assert xsweep.trials(longer)[0].name != xsweep.trials(alone)[0].name  # trained otherwise: not the same trial
    more_workers = _sweep(tmp_path, trials=[{"batch_kind": "xy"}], train=data | {"num_workers": 4})
    assert xsweep.trials(more_workers)[0].name == xsweep.trials(alone)[0].name  # changes no result


def test_a_trial_config_is_base_then_train_then_setting_with_nested_fields(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"output": "ignored", "steps": 50, "lr": 1e-4,
                                    "train": [{"kind": "xquad", "path": str(SHARED_DATA / "xquad")}]}))
    sweep = _sweep(tmp_path, base=str(base), train={"steps": 7}, grid={"lora.rank": [4], "alpha": [0.3]}, seeds=[5])
    trial = xsweep.trials(sweep)[0]
    config = xsweep.trial_config(sweep, trial)
    assert (config.steps, config.lr, config.seed, config.alpha, config.lora.rank) == (7, 1e-4, 5, 0.3, 4)
    assert config.output == str(tmp_path / "sweep" / "trials" / trial.name)


def test_invalid_sweeps_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="grid` or `trials"):
        _sweep(tmp_path)
    with pytest.raises(ValueError, match="seeds go in `seeds`"):
        _sweep(tmp_path, grid={"seed": [1, 2]})


def _result(trial, mono: dict, bias: float) -> dict:
    metrics = {"mono": {**mono, "avg": float(np.mean(list(mono.values())))}}
    for m in ("cross", "multi"):
        metrics[m] = metrics["mono"]
    metrics["language_bias"] = {x: bias for x in mono} | {"avg": bias}
    return {"trial": trial.name, "metrics": metrics, "training": {"val_losses": [[1, 1.0]], "trainable_parameters": 7}}


def test_the_report_means_sds_and_paired_tests_match_numbers_computed_here(tmp_path):
    sweep = _sweep(tmp_path, grid={"batch_kind": ["xx_mono", "hybrid"]}, seeds=[0, 1],
                   evaluation=EVAL | {"language_groups": {"seen": ["de", "en"], "unseen": ["fi"]}})
    a0, a1, b0, b1 = xsweep.trials(sweep)
    scores = [(a0, {"de": 0.2, "en": 0.4, "fi": 0.3}), (a1, {"de": 0.4, "en": 0.2, "fi": 0.5}),
              (b0, {"de": 0.5, "en": 0.5, "fi": 0.2}), (b1, {"de": 0.5, "en": 0.3, "fi": 0.6})]
    results = {t.name: _result(t, s, bias=i) for i, (t, s) in enumerate(scores)}
    summary = xsweep.summarise(sweep, results)
    row = summary["table"]["batch_kind=hybrid"]["mono"]
    assert row["mean"] == pytest.approx((0.4 + 1.4 / 3) / 2) and row["seeds"] == 2
    assert row["sd"] == pytest.approx(abs(0.4 - 1.4 / 3) / np.sqrt(2))  # sd of two values, ddof 1
    assert summary["per_language"]["batch_kind=xx_mono"]["mono"] == pytest.approx({"de": 0.3, "en": 0.3, "fi": 0.4})
    test = summary["paired_tests"]["batch_kind=hybrid vs batch_kind=xx_mono"]["mono"]
    expected = stats.ttest_rel([0.5, 0.4, 0.4], [0.3, 0.3, 0.4])  # hybrid vs xx_mono over de, en, fi
    assert test["over"] == "languages" and test["p"] == pytest.approx(expected.pvalue)
    assert test["diff"] == pytest.approx((0.2 + 0.1 + 0.0) / 3)
    assert summary["language_groups"]["batch_kind=hybrid"]["seen"]["mono"] == pytest.approx((0.5 + 0.4) / 2)
    assert summary["language_groups"]["batch_kind=xx_mono"]["unseen"]["mono"] == pytest.approx(0.4)
    md = xsweep.markdown(sweep, summary, "xdr sweep --config x.yaml")
    assert "| batch_kind=hybrid | 0.4333 ± 0.0471 |" in md and "| 2 | 7 |" in md and "xdr sweep --config x.yaml" in md


def test_plot_lines_are_one_line_per_other_setting_sorted_by_the_axis(tmp_path):
    sweep = _sweep(tmp_path, grid={"lora.rank": [8, 2], "alpha": [0.0, 1.0]}, seeds=[0])
    planned = xsweep.trials(sweep)
    results = {t.name: _result(t, {"en": t.setting["alpha"] + t.setting["lora.rank"], "de": 0.0}, 0.0)
               for t in planned}
    summary = xsweep.summarise(sweep, results)
    assert xsweep.numeric_axes(sweep) == ["lora.rank", "alpha"]
    lines = xsweep.plot_lines(sweep, summary, "lora.rank", "mono")
    assert lines == {"alpha=0.0": ([2, 8], [1.0, 4.0]), "alpha=1.0": ([2, 8], [1.5, 4.5])}


def _tiny_sweep(output: str, tiny_models) -> dict:
    languages = ["en", "de", "es"]
    return {"output": output, "evaluation": EVAL, "max_concurrent_trials": 2,
            "cpus_per_trial": 0.5, "seeds": [0, 1], "grid": {"batch_kind": ["xx_mono", "hybrid"]},
            "train": {"model": str(tiny_models["encoder"]), "pooling": "mean", "normalize": True,
                      # relative to the driver's folder (the repository), as in configs/: a trial runs elsewhere
                      "train": [{"kind": "xquad", "path": "../shared/data/xquad", "articles": [1, 1],
                                 "languages": languages}],
                      "validation": [{"kind": "xquad", "path": str(SHARED_DATA / "xquad"), "articles": [29, 29],
                                      "languages": languages}],
                      "steps": 4, "batch_size": 8, "validate_every": 2, "checkpoint_every": 2,
                      "validation_batches": 1, "query_max_tokens": 16, "passage_max_tokens": 32, "num_workers": 1,
                      "cpus_per_worker": 0.5}}


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 3 minutes on the CI machine: 6 short trainings
def test_a_tiny_sweep_on_s3_killed_and_rerun_trains_only_the_unfinished_trials_and_equals_trials_run_alone(
        tmp_path, tiny_models, ray_local, s3_server):
    """The sweep's driver runs on the shared cluster, as `ray job submit` runs it, and writes to S3 (a cluster's
    shared storage): killing the driver leaves the cluster up, Ray ends the dead job's trials."""
    import ray

    from ray_jobs import train_encoder
    from ray_jobs.sweep import result_uri
    from xdr.io.storage import Storage

    output = f"s3://{s3_server.bucket}/sweep-{tmp_path.name}"
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(yaml.safe_dump(_tiny_sweep(output, tiny_models)))
    sweep = SweepConfig.model_validate(yaml.safe_load(config_file.read_text()))
    storage = Storage(sweep.storage)
    results = [result_uri(sweep, t) for t in xsweep.trials(sweep)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDR_LOG_DIR": str(tmp_path / "logs"), "HF_HUB_OFFLINE": "1"}
    address = ray_local.get_runtime_context().gcs_address
    argv = [sys.executable, "-m", "ray_jobs.sweep", "--config", str(config_file), "--address", address]
    run_and_sigkill_when(argv, env, lambda: any(storage.exists(r) for r in results), 400, "finished trial")
    # the manifest records the training's seconds: retraining a trial would rewrite it with other bytes
    finished = {r: (storage.read_bytes(r), storage.read_bytes(r.replace("result.json", "manifest.json")))
                for r in results if storage.exists(r)}
    assert 1 <= len(finished) < len(results), "the sweep must be killed mid-way"

    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(finished)} finished before, {len(results) - len(finished)} to run" in done.stderr
    for r, before in finished.items():  # finished trials are read, never trained or evaluated again
        assert (storage.read_bytes(r), storage.read_bytes(r.replace("result.json", "manifest.json"))) == before
    report = json.loads(storage.read_bytes(f"{output}/report.json"))
    assert len(report["finished"]) == 4 and not report["failed"]
    assert storage.exists(f"{output}/report.md") and storage.exists(f"{output}/report-validation-curves.png")

    # A trial's figures = the same config trained and evaluated alone, outside Tune: in a Ray task holding
    # half a CPU, as a trial does (one thread; the tiny model's near-ties would otherwise rank differently under
    # another thread count's float sums). Two trials, together as the sweep ran them: one finished before the
    # kill and one the rerun trained.
    @ray.remote(num_cpus=0.5)
    def alone(trial):
        config = xsweep.trial_config(sweep, trial).model_copy(update={"output": str(tmp_path / "alone" / trial.name)})
        manifest = train_encoder.run_training(config)
        return manifest["val_losses"], xsweep.evaluate_model(sweep, config, manifest["model_folder"])

    first_run = next(t for t in xsweep.trials(sweep) if result_uri(sweep, t) in finished)
    rerun = next(t for t in xsweep.trials(sweep) if result_uri(sweep, t) not in finished)
    trials = [first_run, rerun]  # two at a time: more tasks would take the CPUs their Train workers need
    runs = ray.get([alone.remote(t) for t in trials])
    for trial, (val_losses, figures) in zip(trials, runs):
        in_sweep = json.loads(storage.read_bytes(result_uri(sweep, trial)))
        assert np.array(val_losses) == pytest.approx(np.array(in_sweep["training"]["val_losses"]), abs=1e-5)
        assert in_sweep["training"]["seconds"] > 0 and in_sweep["evaluation_s"] > 0  # the trial's cost
        for metric, values in figures.items():
            assert values == pytest.approx(in_sweep["metrics"][metric], abs=1e-6), (trial.name, metric)
        mono = report["trial_results"][trial.name]["metrics"]["mono"]["avg"]
        assert mono == pytest.approx(figures["mono"]["avg"], abs=1e-6)
