"""What goes wrong inside a worker reaches the user as its own message; SIGTERM stops a job and its Ray."""

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import REPO

JOB_ENV = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def _corpus(path, n=400):
    path.write_text("".join(f'{{"id": "p{i}", "text": "text of passage {i} " }}\n' for i in range(n)))
    return path


def _session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


@pytest.mark.slow
def test_a_corrupt_model_fails_the_job_with_the_loaders_message(tmp_path, tiny_models):
    broken = tmp_path / "broken-encoder"
    shutil.copytree(tiny_models["encoder"], broken)
    (broken / "config.json").write_text("{ this is not json")  # passes the preflight (the file is there)
    done = subprocess.run(
        [sys.executable, "-m", "ray_jobs.index_corpus", f"--corpus.path={_corpus(tmp_path / 'c.jsonl')}",
         f"--output={tmp_path / 'out'}", f"--generator.model={tiny_models['generator']}",
         f"--encoder.model={broken}", "--generator.languages=[fi]", "--generator.queries_per_language=1",
         "--generator.max_new_tokens=4", "--resources.gpus_per_actor=0", "--resources.cpus_per_actor=0.5",
         "--resources.generator_actors=[1,1]", "--resources.encoder_actors=[1,1]"],
        cwd=REPO, env=JOB_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()
    error = next(line for line in last if line.startswith("error: "))
    assert "config.json" in error or "JSON" in error or "Expecting" in error, error
    assert "RayTaskError" not in error and "Traceback" not in "\n".join(last[-3:])


@pytest.mark.slow
def test_sigterm_stops_the_job_and_its_ray(tmp_path, tiny_models):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray_jobs.index_corpus", f"--corpus.path={_corpus(tmp_path / 'c.jsonl', 3000)}",
         f"--output={tmp_path / 'out'}", f"--generator.model={tiny_models['generator']}",
         f"--encoder.model={tiny_models['encoder']}", "--generator.max_new_tokens=24",
         "--corpus.passages_per_part=50", "--resources.gpus_per_actor=0", "--resources.cpus_per_actor=0.5",
         "--resources.generator_actors=[1,1]", "--resources.encoder_actors=[1,1]"],
        cwd=REPO, env=JOB_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "out" / "queries").glob("part-*.parquet")):  # mid-run: the pipeline works
            assert proc.poll() is None and time.monotonic() < deadline, "the job never started its pipeline"
            time.sleep(0.2)
        assert len(_session_processes(proc.pid)) > 3  # the driver and its local Ray
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        proc.wait(timeout=15)
        assert time.monotonic() - stopped < 15
        assert proc.returncode == 130 and "stopped (SIGTERM)" in proc.stderr.read()
        time.sleep(2)
        left = _session_processes(proc.pid)
        assert not left, f"processes of the stopped job survive: {[p.cmdline()[:1] for p in left]}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_root_cause_unwraps_chained_errors_and_remote_tracebacks():
    from ray_jobs.common import root_cause

    class Wrapper(Exception):
        pass

    class Silent(Exception):
        def __str__(self):
            return ""

    try:
        try:
            raise OSError("disk full")
        except OSError as err:
            raise Wrapper("Ray's words") from err
    except Wrapper as err:
        assert root_cause(err) == "OSError: disk full"
    remote = ("The actor died because of an error raised in its creation task, ray::X.__init__()\n"
              "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
              "json.decoder.JSONDecodeError: Expecting value\n\nDuring handling of the above exception...\n"
              "OSError: config.json is not a valid JSON file.")
    try:
        raise RuntimeError(remote) from Silent()
    except RuntimeError as err:
        assert root_cause(err) == "OSError: config.json is not a valid JSON file."
    assert root_cause(ValueError("plain")) == "ValueError: plain"


def test_a_stalled_job_says_so_and_names_the_logs():
    from xdr.progress import StallWatch

    said = []
    with StallWatch("embed", 0.3, said.append, hint="workers' logs: /tmp/x") as watch:
        time.sleep(0.2)
        watch.touch()  # progress in time: no warning
        time.sleep(0.2)
        assert said == []
        time.sleep(0.5)  # now silent for longer than 0.3 s
    assert len(said) >= 1 and said[0].startswith("[embed] no progress for") and said[0].endswith("/tmp/x")
