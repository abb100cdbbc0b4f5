"""`ray job submit` against a local `ray start --head`: the job runs unchanged as a submitted job."""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest
import yaml

from ray_jobs.common import free_port, session_processes
from ray_jobs.local_cluster import RAY_CLI, cli_env
from tests.support.jobs import make_config
from tests.support.paths import REPO


@pytest.fixture
def ray_head(tmp_path):
    """A head node started with `ray start --block` in its own process group, stopped by that group."""
    dashboard = free_port()
    env = cli_env()
    cmd = [RAY_CLI, "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=2", "--num-gpus=0",
           "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats"]
    log = open(tmp_path / "ray-head.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # it answers (401 without the token): it is up
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray dashboard did not come up in 120 s"
                time.sleep(0.5)
        yield address, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops the node's processes on SIGTERM...
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # ...taking half a minute on 2 cores: nothing here needs it graceful
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for leftover in session_processes(proc.pid):
            leftover.kill()
        log.close()


@pytest.mark.slow
def test_ray_job_submit_runs_the_indexing_job(ray_head, tiny_models, tmp_path):
    address, env = ray_head
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"s{i}", "text": f"submitted passage {i}"}) + "\n" for i in range(10)))
    config = make_config(tiny_models, corpus, tmp_path / "run")
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))

    submit = subprocess.run(
        [RAY_CLI, "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
         "python", "-m", "ray_jobs.index_corpus", "--config", str(config_path), "--fusion.alpha=0.05"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout
    assert "embeddings: 10 in 2 parts" in submit.stdout  # the job's summary reaches the submitter
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["settings"]["fusion"]["alpha"] == 0.05
    assert pq.read_table(tmp_path / "run" / "embeddings")["id"].to_pylist() == [f"s{i}" for i in range(10)]
