"""Every job checks its models, inputs, outputs and storage before any Ray work: a bad value fails in
seconds with one line naming the field, never a traceback (issue 20). Run through the `xdr` command's
own entry point, in process, with the Hub offline as on a firewalled cluster."""

import json
import time

import pytest

from ray_jobs.cli import main as xdr

FAILURE_S = 20


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _fails(capsys, argv, field):
    started = time.perf_counter()
    with pytest.raises(SystemExit) as stop:
        xdr(argv)
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert seconds < FAILURE_S
    assert err.startswith(f"error: {field} = ") and "Traceback" not in err and err.count("\n") <= 2, err
    return err


@pytest.fixture
def setup(tmp_path, tiny_models):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha"}\n')
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    train = tmp_path / "triplets.jsonl"
    train.write_text(json.dumps({"query": "q", "positive_passages": [{"text": "p"}], "query_lang": "en"}) + "\n")
    run = tmp_path / "run"
    (run / "index").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    (run / "index" / "manifest.json").write_text(json.dumps({"encoder": {"model": "no-org/no-such-encoder"}}))
    return {"corpus": corpus, "unwritable": blocker / "out", "train": train, "run": run, **tiny_models,
            "out": tmp_path / "out"}


def _index(s, **override):
    args = {"corpus.path": s["corpus"], "generator.model": s["generator"], "encoder.model": s["encoder"],
            "output": s["out"], **override}
    return ["index", *[f"--{k}={v}" for k, v in args.items()]]


def test_index_job(capsys, setup):
    s = setup
    err = _fails(capsys, _index(s, **{"encoder.model": "no-org/no-such-model"}), "encoder.model")
    assert "HF_HUB_OFFLINE" in err and "HF_HOME" in err
    _fails(capsys, _index(s, **{"generator.model": str(s["out"] / "missing-folder")}), "generator.model")
    _fails(capsys, _index(s, **{"generator.model": str(s["corpus"].parent)}), "generator.model")  # no config.json
    _fails(capsys, _index(s, **{"corpus.path": str(s["corpus"].parent / "*.tsv")}), "corpus.path")
    _fails(capsys, _index(s, output=s["unwritable"]), "output")


def test_an_unknown_hub_id_fails_fast_when_the_hub_is_allowed(capsys, setup, monkeypatch):
    """Without HF_HUB_OFFLINE: here the Hub is unreachable (a connection error, bounded by the timeout);
    where it is reachable, it answers that the model does not exist. Both fail in seconds."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    err = _fails(capsys, _index(setup, **{"generator.model": "xdr-test-no-org/no-such-model-4711"}), "generator.model")
    assert "did not answer" in err or "no such model" in err


def test_index_job_check_flag_runs_only_the_checks(capsys, setup):
    xdr([*_index(setup), "--check"])
    assert "preflight passed" in capsys.readouterr().out
    assert not setup["out"].exists() or not any(setup["out"].iterdir())  # the probe file is gone, nothing else


def test_index_job_empty_s3_model_folder(capsys, setup, s3_server):
    err = _fails(capsys, _index(setup, **{"encoder.model": f"s3://{s3_server.bucket}/no-model-here/"}),
                 "encoder.model")
    assert "empty or missing" in err


def test_build_serve_and_tune_jobs(capsys, setup):
    s = setup
    _fails(capsys, ["build-index", f"--run={s['out']}/no-run"], "run")
    _fails(capsys, ["build-index", f"--run={s['run']}", f"--output={s['unwritable']}"], "output")
    _fails(capsys, ["serve", f"--index={s['out']}/no-index"], "index")
    _fails(capsys, ["serve", f"--index={s['run']}/index"], "encoder.model (from the index manifest)")
    tune = ["tune-index", "--eval.kind=miracl-yo", f"--output={s['out']}"]
    _fails(capsys, [*tune, f"--eval.path={s['out']}/no-data"], "eval.path")
    _fails(capsys, ["tune-index", "--eval.kind=miracl-yo", f"--eval.path={s['corpus']}", f"--output={s['unwritable']}"],
           "output")


def test_training_jobs(capsys, setup):
    s = setup
    base = [f"--output={s['out']}", f"--set=train=[{{kind: triplets, path: {s['train']}}}]"]
    _fails(capsys, ["train-encoder", *base, "--model=no-org/no-such-model"], "model")
    _fails(capsys, ["train-generator", *base, f"--model={s['out']}/no-folder"], "model")
    _fails(capsys, ["train-generator", f"--output={s['out']}", f"--model={s['generator']}",
                    f"--set=train=[{{kind: triplets, path: {s['out']}/none-*.jsonl}}]"], "train[0].path")
    _fails(capsys, ["train-encoder", f"--output={s['unwritable']}", *base[1:]], "output")


def test_evaluate(capsys, setup):
    from tests.support.paths import SHARED_DATA

    s = setup
    xquad_r = str(SHARED_DATA / "xquad-r")
    _fails(capsys, ["evaluate", "lareqa", f"--data={s['out']}/no-data", f"--out={s['out']}"], "data")
    _fails(capsys, ["evaluate", "lareqa", f"--data={xquad_r}", "--encoder=no-org/no-such-model",
                    f"--out={s['out']}"], "encoder.model")
    _fails(capsys, ["evaluate", "lareqa", f"--data={xquad_r}", f"--out={s['unwritable']}"], "output")


_WORKER_LOAD = """
import sys, time
import xdr.models.encoder  # imports are not network waits: the clock starts after them
from xdr.models.files import ModelUnavailable, local_model
started = time.perf_counter()
try:
    print(local_model(sys.argv[1]))
except ModelUnavailable as err:
    print("unavailable:", err)
print(f"seconds={time.perf_counter() - started:.2f}")
"""


def _load_in_a_worker(name: str, **env: str) -> tuple[str, float]:
    """local_model as a Ray worker runs it: a fresh process with the job's environment."""
    import os
    import subprocess
    import sys

    from tests.support.paths import REPO

    environ = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run([sys.executable, "-c", _WORKER_LOAD, name], env={**environ, "PYTHONPATH": str(REPO), **env},
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    return lines[-2], float(lines[-1].removeprefix("seconds="))


@pytest.fixture
def silent_hub():
    """A Hub endpoint that accepts connections and never answers, as behind a firewall that drops packets."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_a_worker_never_waits_on_the_hub_longer_than_the_bound(silent_hub, tmp_path):
    said, seconds = _load_in_a_worker("xdr-test-org/not-cached", HF_ENDPOINT=silent_hub, XDR_HUB_TIMEOUT_S="2",
                                      HF_HUB_CACHE=str(tmp_path / "hub"))
    assert said.startswith("unavailable:") and "did not answer within 2 s" in said and "HF_HOME" in said, said
    assert seconds < 2 + 1.5  # the bound, whatever the HTTP client's retries


def test_a_cached_hub_model_loads_from_its_snapshot_without_a_request(silent_hub, tmp_path, tiny_models):
    """The Hub cache layout (models--org--name/refs/main -> snapshots/<commit>/...), as `hf download` leaves it."""
    import shutil

    repo = tmp_path / "hub" / "models--xdr-test-org--tiny-encoder"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_models["encoder"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    said, seconds = _load_in_a_worker("xdr-test-org/tiny-encoder", HF_ENDPOINT=silent_hub, XDR_HUB_TIMEOUT_S="30",
                                      HF_HUB_CACHE=str(tmp_path / "hub"))
    assert said == str(repo / "snapshots" / commit)
    assert seconds < 10  # far below the 30 s the silent Hub would cost if it were asked


def test_sweep(capsys, setup, tmp_path):
    import yaml

    s = setup
    sweep = {"output": str(s["out"]), "train": {"train": [{"kind": "triplets", "path": str(s["train"])}]},
             "grid": {"model": [str(s["encoder"]), "no-org/no-such-model"]},
             "evaluation": {"kind": "lareqa", "path": str(tmp_path / "no-data")}}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep))
    _fails(capsys, ["sweep", f"--config={config}"], "evaluation.path")
    from tests.support.paths import SHARED_DATA

    config.write_text(yaml.safe_dump(sweep | {"evaluation": {"kind": "lareqa", "path": str(SHARED_DATA / "xquad-r")}}))
    err = _fails(capsys, ["sweep", f"--config={config}"], "model (trial model=no-org/no-such-model)")
    assert "HF_HUB_OFFLINE" in err
