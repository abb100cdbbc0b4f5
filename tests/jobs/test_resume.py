"""Kill the job (driver and workers, SIGKILL) after its first committed part, run the same command
again, and compare with an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from ray_jobs.index_corpus import run_indexing
from tests.support.jobcheck import table_rows
from tests.support.jobs import make_config
from tests.support.paths import REPO


def _job_command(config_path):
    return [sys.executable, "-m", "ray_jobs.index_corpus", "--config", str(config_path)]


def _job_env():
    # "local": a fresh local Ray, never a cluster some earlier (killed) run left recorded in /tmp/ray
    return {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(REPO)}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_killed_job_resumes_to_the_uninterrupted_result(ray_local, tiny_models, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"p{i:03d}", "title": f"T{i}", "text": f"text of passage {i} " * 5})
                              + "\n" for i in range(96)))
    killed = make_config(tiny_models, corpus, tmp_path / "killed", generator={"max_new_tokens": 24})
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(killed.model_dump(mode="json")))

    proc = subprocess.Popen(_job_command(config_path), cwd=REPO, env=_job_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_commit = tmp_path / "killed" / "embeddings" / "part-00000.parquet"
    deadline = time.monotonic() + 240
    try:
        while not first_commit.exists():
            assert proc.poll() is None, "the job ended before its first commit"
            assert time.monotonic() < deadline, "no part committed within 240 s"
            time.sleep(0.05)
    finally:
        _kill_group(proc.pid)  # the driver and the local Ray it started (same process group)
        proc.wait()
    time.sleep(1)
    survivors = [p for p in psutil.process_iter() if _pgid(p) == proc.pid and _alive(p)]
    assert not survivors, f"processes of the killed job survive: {survivors}"

    committed = sorted(p.name for p in (tmp_path / "killed" / "embeddings").glob("part-*.parquet"))
    assert 1 <= len(committed) < 12, f"the kill came too late to test resume: {committed}"
    for path in (tmp_path / "killed").rglob("part-*.parquet"):  # no partial file is visible as committed
        pq.read_table(path)

    # the same command on the test's running Ray (a resubmitted job): resuming needs only the files
    rerun_env = {**_job_env(), "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    rerun = subprocess.run(_job_command(config_path), cwd=REPO, env=rerun_env, capture_output=True, text=True,
                           timeout=400, start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["attempts"] == 2
    assert manifest["counts"]["parts_resumed"] >= len(committed)
    assert manifest["counts"]["validation_resumed"], "the rerun validated the corpus a second time"
    assert "the corpus is not read again" in rerun.stderr

    run_indexing(make_config(tiny_models, corpus, tmp_path / "whole", generator={"max_new_tokens": 24}))
    for stage in ("passages", "rejects", "queries"):
        assert pq.read_table(tmp_path / "killed" / stage) == pq.read_table(tmp_path / "whole" / stage), stage
    resumed, whole = (table_rows(pq.read_table(tmp_path / name / "embeddings")) for name in ("killed", "whole"))
    assert list(resumed) == list(whole) == [f"p{i:03d}" for i in range(96)]  # every id exactly once
    for pid in whole:
        np.testing.assert_allclose(resumed[pid], whole[pid], rtol=1e-5, atol=1e-6)
    assert not list((tmp_path / "killed").rglob(".*.tmp-*")), "temporary files left behind"


def _pgid(process):
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, psutil.Error):
        return None


def _alive(process):
    try:
        return process.status() != psutil.STATUS_ZOMBIE  # a zombie is dead, only not yet reaped
    except psutil.Error:
        return False
