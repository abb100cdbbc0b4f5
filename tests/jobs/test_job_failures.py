"""What goes wrong inside a worker reaches the user as its own message; SIGTERM stops a job and its Ray."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ray_jobs.common import NODE_DIED, free_port, session_processes
from tests.support.jobs import processes_left
from tests.support.paths import REPO

JOB_ENV = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def _corpus(path, n=400):
    path.write_text("".join(f'{{"id": "p{i}", "text": "text of passage {i} " }}\n' for i in range(n)))
    return path


def _indexing_job(tmp_path, tiny_models) -> subprocess.Popen:
    """An indexing job with work enough to be stopped mid-run (3,000 passages, parts of 50), in its own session."""
    return subprocess.Popen(
        [sys.executable, "-m", "ray_jobs.index_corpus", f"--corpus.path={_corpus(tmp_path / 'c.jsonl', 3000)}",
         f"--output={tmp_path / 'out'}", f"--generator.model={tiny_models['generator']}",
         f"--encoder.model={tiny_models['encoder']}", "--generator.max_new_tokens=24",
         "--corpus.passages_per_part=50", "--resources.gpus_per_actor=0", "--resources.cpus_per_actor=0.5",
         "--resources.generator_actors=[1,1]", "--resources.encoder_actors=[1,1]"],
        cwd=REPO, env=JOB_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_its_pipeline(proc: subprocess.Popen, output) -> None:
    """Until the job has committed a queries part: mid-run, the pipeline working."""
    deadline = time.monotonic() + 300
    while not list((output / "queries").glob("part-*.parquet")):
        assert proc.poll() is None and time.monotonic() < deadline, "the job never started its pipeline"
        time.sleep(0.2)


def _stop_with_sigterm(proc: subprocess.Popen, output) -> str:
    """SIGTERM to a running job's driver: it exits with 130 within 15 s, says so, and leaves no process of its
    session behind. Returns what it printed (`output()`, read once it has exited)."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)  # raises when the job is still running then
    said = output()
    assert proc.returncode == 130 and "stopped (SIGTERM)" in said, said[-3000:]
    left = processes_left(proc.pid)
    assert not left, f"processes of the stopped job survive: {[p.cmdline()[:3] for p in left]}"
    return said


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
    proc = _indexing_job(tmp_path, tiny_models)
    try:
        _wait_for_its_pipeline(proc, tmp_path / "out")
        assert len(session_processes(proc.pid)) > 3  # the driver and its local Ray
        _stop_with_sigterm(proc, proc.stderr.read)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _job_argv(job: str, tmp_path, tiny_models) -> tuple[list[str], str]:
    """A run of `job` with work enough to be stopped mid-run, and the output line that says it is working."""
    from tests.support.indexes import build_here
    from tests.support.paths import SHARED_DATA
    from xdr.ingest.synthetic import clustered_vectors, write_run
    from xdr.io.storage import Storage

    working = "Ray resources:"  # the job's Ray is up and the job's own work has begun
    if job in ("build-index", "serve"):
        run = tmp_path / "run"
        write_run(Storage(), str(run), clustered_vectors(40_000 if job == "build-index" else 2_000, 32, seed=3),
                  part_size=10_000)
        if job == "build-index":
            return [job, f"--run={run}", "--factory=IVF256,PQ8", "--shards=4", "--train_sample=40000"], working
        build_here(str(run), str(run / "index"), "IVF8,Flat", shards=1)
        manifest = run / "index" / "manifest.json"  # the fields the build job adds that serving reads
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {
            "factory": "IVF8,Flat", "dim": 32, "vectors": 2_000, "nlist": 8, "source_run": str(run)}))
        return [job, f"--index={run / 'index'}", "--encoder.model=stand-in:hashing-32", f"--port={free_port()}",
                "--router_replicas=[1,1]"], working  # stopped while its replicas start (test_newcomer: serving)
    if job == "train-encoder":  # train-generator runs the same driver code (ray_jobs/training.py)
        data = tmp_path / "train.jsonl"
        data.write_text("".join(json.dumps({"id": f"q{i}", "lang": "en", "question": f"word{i % 7} what?",
                                            "passage": f"word{i % 7} and some text", "title": ""}) + "\n"
                                for i in range(64)))
        return [job, f"--model={tiny_models['encoder']}", f"--output={tmp_path / 'out'}", "--steps=100000",
                "--batch_size=4", "--num_workers=1", "--cpus_per_worker=1",
                f"--set=train=[{{kind: parallel_jsonl, path: {data}}}]"], working
    assert job == "evaluate"
    return [job, "lareqa", f"--data={SHARED_DATA / 'xquad-r'}", f"--out={tmp_path / 'o'}"], "evaluate lareqa: "


@pytest.mark.slow
# Each kind of Ray work once: tasks (build-index; tune-index and the indexing job run tasks the same way), Serve
# replicas, Ray Train workers (train-generator runs the same driver code), and a job without Ray.
@pytest.mark.parametrize("job", ["build-index", "serve", "train-encoder", "evaluate"])
def test_sigterm_mid_run_stops_each_job_and_its_ray_within_seconds(job, tmp_path, tiny_models):
    argv, working = _job_argv(job, tmp_path, tiny_models)
    out = tmp_path / "job.out"
    with open(out, "w") as sink:
        local_ray = [] if job == "evaluate" else ["--address", "local"]  # evaluate runs without Ray
        proc = subprocess.Popen([sys.executable, "-m", "ray_jobs.cli", *argv, *local_ray],
                                cwd=REPO, env={**JOB_ENV, "XDR_LOG_DIR": str(tmp_path / "logs")}, stdout=sink,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while working not in out.read_text():
            assert proc.poll() is None, f"{job} ended before it was stopped:\n{out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{job} never started its work:\n{out.read_text()[-3000:]}"
            time.sleep(0.2)
        time.sleep(3)  # into the work: workers, tasks or replicas are running
        assert proc.poll() is None, f"{job} finished before it was stopped; give it more work"
        said = _stop_with_sigterm(proc, out.read_text)
        assert "Traceback" not in said, said[-3000:]
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


def test_waiting_on_tasks_that_make_no_progress_says_so_on_the_driver(ray_local, caplog):
    import ray

    from ray_jobs.common import as_finished

    slow = ray.remote(lambda: time.sleep(1.5) or 7).options(num_cpus=0.1).remote()
    with caplog.at_level("WARNING", logger="xdr"):
        assert [ray.get(ref) for ref in as_finished([slow], "add", stall_s=0.4)] == [7]
    said = [r.getMessage() for r in caplog.records if "no progress" in r.getMessage()]
    assert said and said[0].startswith("[add] no progress for") and "workers' logs: " in said[0], said


def _driver_with_last_word(raylet_pid: int, grace_s: float, ends_by_its_own_code: bool) -> str:
    """A driver process that starts the last word and exits (saying "done" or not); its stderr, which is
    read to the end, so including what the last word says after the driver is gone."""

    code = ("import sys; from ray_jobs.common import start_last_word; "
            "word = start_last_word(int(sys.argv[1]), float(sys.argv[2]))\n"
            "if sys.argv[3] == 'done': word.stdin.write(b'done'); word.stdin.close()")
    ran = subprocess.run([sys.executable, "-c", code, str(raylet_pid), str(grace_s),
                          "done" if ends_by_its_own_code else "killed"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    return ran.stderr


def test_the_last_word_says_the_node_died_when_the_raylet_exits_after_the_driver():
    """Seen in CI: the core worker ended the driver while the raylet was still shutting down; the last word
    must wait for the raylet, say nothing when the driver ended by its own code, and nothing when the
    raylet outlives the driver (a driver killed for another reason)."""
    raylet = subprocess.Popen(["sleep", "1.5"])  # still up when the driver goes, gone 1.5 s later
    said = _driver_with_last_word(raylet.pid, 20, ends_by_its_own_code=False)
    assert said.splitlines()[-1:] == [f"error: {NODE_DIED}"], said
    raylet.wait()
    raylet = subprocess.Popen(["sleep", "0.5"])
    assert "error:" not in _driver_with_last_word(raylet.pid, 20, ends_by_its_own_code=True)
    raylet.wait()
    raylet = subprocess.Popen(["sleep", "30"])
    try:
        assert "error:" not in _driver_with_last_word(raylet.pid, 1, ends_by_its_own_code=False)
    finally:
        raylet.kill()
        raylet.wait()


@pytest.mark.slow
def test_when_the_ray_node_dies_under_a_job_the_driver_says_so_in_one_line(tmp_path, tiny_models):
    """kill -9 of the node's dashboard agent takes a local Ray node down (its raylet follows); the driver
    must not die silently or with a bare actor error: one line says the node died and that a rerun resumes."""
    proc = _indexing_job(tmp_path, tiny_models)
    try:
        _wait_for_its_pipeline(proc, tmp_path / "out")
        agents = [p for p in session_processes(proc.pid) if p.cmdline()[:1] == ["ray::DashboardAgent"]]
        assert agents, [p.cmdline()[:2] for p in session_processes(proc.pid)]
        agents[0].send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
        said = proc.stderr.read()
        lines = [line for line in said.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 1 and len(lines) == 1, said[-3000:]
        assert "the Ray node under this job died" in lines[0] and "rerun the same command to resume" in lines[0]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
