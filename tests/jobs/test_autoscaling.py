"""Autoscaling seen working, on the local autoscaling cluster made from cluster/aws.yaml (ray_jobs.local_cluster):
GPU nodes launched from zero for the indexing job and released when idle, a GPU node lost mid-run and
replaced, and the endpoint's replicas scaled up under load and back down without a failed request.

With XDR_AUTOSCALING_TIMELINE=<file.json> the tests write what they measured there (the timelines in
docs/guides/clusters.md come from such a run)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from ray_jobs.common import free_port
from ray_jobs.local_cluster import RAY_CLI, ClusterState, cli_env
from tests.support.jobcheck import table_rows
from tests.support.jobs import make_config
from tests.support.paths import REPO
from tests.support.pipeline import index_here
from xdr.config import IndexBuildConfig
from xdr.index.builder import build_index
from xdr.index.search import ShardedSearcher
from xdr.models.encoder import make_encoder

IDLE_S = 15.0  # the rig's idle timeout: an idle worker node is released after this
LAUNCHER = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
GPU_TYPES = {name for name, spec in LAUNCHER["available_node_types"].items() if spec["resources"].get("GPU")}
TIMELINES: dict[str, dict] = {}
UP_LINE = re.compile(r"cluster up: dashboard (?P<dashboard>\S+), GCS (?P<gcs>\S+)")
SERVE = str(Path(RAY_CLI).parent / "serve")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """The cluster as the guide starts it: `python -m ray_jobs.local_cluster`, stopped with Ctrl-C, after which
    no process of it may be left; its timeline file must hold the GPU nodes' coming and going."""
    root = tmp_path_factory.mktemp("rig")
    timeline = root / "timeline.jsonl"
    cli = subprocess.Popen([sys.executable, "-m", "ray_jobs.local_cluster", "--idle-timeout-s", str(IDLE_S),
                            "--workdir", str(root), "--timeline", str(timeline)], cwd=REPO, env=cli_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    deadline = time.monotonic() + 180
    while not (up := [m for line in list(lines) if (m := UP_LINE.search(line))]):
        assert cli.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.2)
    state = ClusterState(up[0]["dashboard"])
    try:
        yield state
    finally:
        cli.send_signal(signal.SIGINT)
        cli.wait(timeout=120)
        reader.join(timeout=10)
        if os.environ.get("XDR_AUTOSCALING_TIMELINE"):
            Path(os.environ["XDR_AUTOSCALING_TIMELINE"]).write_text(json.dumps(TIMELINES, indent=2) + "\n")
    gcs = up[0]["gcs"]
    left = [p for p in psutil.process_iter(["cmdline"]) if any(gcs in arg for arg in p.info["cmdline"] or [])]
    assert cli.returncode == 0 and not left, ("".join(lines)[-3000:], left)
    events = [json.loads(line) for line in timeline.read_text().splitlines()]
    gpu_events = {e["event"] for e in events if e["node_type"] in GPU_TYPES}
    assert gpu_events == {"up", "gone"}, events


@pytest.fixture(scope="module")
def job(tiny_models, tmp_path_factory):
    """The job config both indexing scenarios submit (GPU actors) and the same config's outputs computed
    here without Ray: a single-process run, to compare the cluster's outputs with."""
    root = tmp_path_factory.mktemp("autoscaled-job")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"a{i:02d}", "title": f"T{i}", "text": f"passage {i} on rivers " * 4})
                              + "\n" for i in range(48)))
    config = make_config(tiny_models, corpus, root / "reference", generator={"max_new_tokens": 16},
                         resources={"gpus_per_actor": 1, "cpus_per_actor": 0.5})
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    index_here(config)
    return config, path


def _no_workers(rig):
    rig.wait_for("no worker node before the scenario", lambda ns: not [n for n in ns if n.alive and
                                                                        n.node_type != "head"], IDLE_S + 60)


def _submit(rig, config_path: Path, output: Path, wait: bool) -> tuple[str, subprocess.CompletedProcess]:
    submission = f"xdr-{output.name}-{time.time_ns()}"
    cmd = [RAY_CLI, "job", "submit", "--address", rig.dashboard, "--submission-id", submission, "--working-dir",
           str(REPO), *([] if wait else ["--no-wait"]), "--", "python", "-m", "ray_jobs.index_corpus",
           "--config", str(config_path), f"--output={output}"]
    done = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return submission, done


def _job(rig, submission: str) -> dict:
    return rig.api(f"/api/jobs/{submission}")


def _assert_same_outputs(run: Path, reference: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete", manifest
    for stage in ("passages", "queries"):
        assert pq.read_table(run / stage) == pq.read_table(reference / stage), stage
    got, expected = (table_rows(pq.read_table(folder / "embeddings")) for folder in (run, reference))
    assert list(got) == list(expected) == [f"a{i:02d}" for i in range(48)]  # every passage exactly once
    for pid in expected:
        np.testing.assert_allclose(got[pid], expected[pid], rtol=1e-5, atol=1e-6)


def _stage_actor_nodes(rig, job_id: str) -> dict[str, set[str]]:
    """The nodes a job's generator and encoder actors run on (a restarted actor: the node of its last start)."""
    actors = rig.api(f"/api/v0/actors?detail=1&limit=10000&filter_keys=job_id&filter_predicates=%3D"
                     f"&filter_values={job_id}")["data"]["result"]["result"]
    found: dict[str, set[str]] = {"GenerateQueriesStage": set(), "EmbedPartStage": set()}
    for actor in actors:
        for stage, nodes in found.items():
            if stage in actor["class_name"]:
                nodes.add(actor["node_id"])
    return found


def test_the_indexing_job_gets_gpu_nodes_from_zero_and_gives_them_back(rig, job, tmp_path):
    config, config_path = job
    _no_workers(rig)
    submitted = time.time()
    submission, done = _submit(rig, config_path, tmp_path / "run", wait=True)
    assert "succeeded" in done.stdout
    info = _job(rig, submission)
    _assert_same_outputs(tmp_path / "run", Path(config.output))

    launched = [n for n in rig.nodes() if n.started_s >= submitted]
    gpu_nodes = [n for n in launched if n.resources.get("GPU")]
    assert gpu_nodes, f"no GPU node was launched: {launched}"
    assert {n.node_type for n in gpu_nodes} <= GPU_TYPES
    on = _stage_actor_nodes(rig, info["job_id"])
    gpu_ids = {n.node_id for n in gpu_nodes}
    assert on["GenerateQueriesStage"] and on["GenerateQueriesStage"] <= gpu_ids, on
    assert on["EmbedPartStage"] and on["EmbedPartStage"] <= gpu_ids, on

    gone = rig.wait_for("every node the job launched released", lambda ns: not [
        n for n in ns if n.alive and n.started_s >= submitted], IDLE_S + 60)
    ended = {n.node_id: n.ended_s for n in gone}
    first_part = (tmp_path / "run" / "embeddings" / "part-00000.parquet").stat().st_mtime
    TIMELINES["indexing job, GPU nodes from zero"] = {
        "submitted": 0.0,
        "nodes_up": sorted(round(n.started_s - submitted, 1) for n in launched),
        "node_types": sorted(n.node_type for n in launched),
        "first_part": round(first_part - submitted, 1),
        "job_ended": round(info["end_time"] / 1000 - submitted, 1),
        "nodes_gone": sorted(round(ended[n.node_id] - submitted, 1) for n in launched),
        "idle_timeout_s": IDLE_S}
    print(TIMELINES["indexing job, GPU nodes from zero"])
    # released after the idle timeout, not before: no node left while the job still needed it
    assert all(ended[n.node_id] >= info["end_time"] / 1000 for n in gpu_nodes)


def _raylet_of(node_id: str) -> psutil.Process:
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "raylet" and f"--node_id={node_id}" in cmdline:
            return proc
    raise AssertionError(f"no raylet process for node {node_id}")


def test_a_gpu_node_lost_mid_run_is_replaced_and_the_job_completes_unchanged(rig, job, tmp_path):
    config, config_path = job
    _no_workers(rig)
    submitted = time.time()
    submission, _ = _submit(rig, config_path, tmp_path / "run", wait=False)
    # the generator's node, once it wrote its first part: the parts left need a GPU, and the encoder holds the other
    first_part = tmp_path / "run" / "queries" / "part-00000.parquet"
    deadline = time.monotonic() + 300
    while not first_part.exists():
        assert _job(rig, submission)["status"] in ("PENDING", "RUNNING"), _job(rig, submission)
        assert time.monotonic() < deadline, "no part committed within 300 s"
        time.sleep(0.1)
    victim = next(iter(_stage_actor_nodes(rig, _job(rig, submission)["job_id"])["GenerateQueriesStage"]))
    _raylet_of(victim).kill()  # the node is lost as a spot instance is: no goodbye
    killed = time.time()
    generated = len(list((tmp_path / "run" / "queries").glob("part-*.parquet")))
    assert generated < 6, "the loss came too late: every part was generated"

    deadline = time.monotonic() + 400
    while (status := _job(rig, submission)["status"]) in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline, "the job did not end within 400 s of the node's loss"
        time.sleep(1)
    info = _job(rig, submission)
    assert status == "SUCCEEDED", info
    _assert_same_outputs(tmp_path / "run", Path(config.output))

    nodes = {n.node_id: n for n in rig.nodes()}
    assert not nodes[victim].alive
    replacements = [n for n in nodes.values() if n.resources.get("GPU") and n.started_s > killed]
    assert replacements, "no GPU node was launched after the loss"
    on = _stage_actor_nodes(rig, info["job_id"])
    assert on["GenerateQueriesStage"] and on["GenerateQueriesStage"] <= {n.node_id for n in replacements}, on
    TIMELINES["GPU node lost mid-run"] = {
        "submitted": 0.0, "first_part": round(first_part.stat().st_mtime - submitted, 1),
        "raylet_killed": round(killed - submitted, 1), "killed_node_type": nodes[victim].node_type,
        "parts_generated_at_loss": generated,
        "replacement_up": sorted(round(n.started_s - submitted, 1) for n in replacements),
        "job_ended": round(info["end_time"] / 1000 - submitted, 1)}
    print(TIMELINES["GPU node lost mid-run"])
    rig.wait_for("the nodes released after the run", lambda ns: not [
        n for n in ns if n.alive and n.node_type != "head"], IDLE_S + 60)


def _replicas(rig, app: str) -> dict[str, int]:
    """RUNNING replicas of each deployment of a Serve application."""
    apps = rig.api("/api/serve/applications/")["applications"]
    if app not in apps:
        return {}
    return {name: sum(r["state"] == "RUNNING" for r in d["replicas"])
            for name, d in apps[app]["deployments"].items()}


class Load:
    """Closed-loop callers asking one question; every answer is checked against the expected ranking."""

    def __init__(self, url: str, query: str, expected_ids: list[str]):
        self.url, self.query, self.expected = url, query, expected_ids
        self.pause_s = 0.0  # between a caller's requests
        self.seen: Counter = Counter()
        self.stops: list[threading.Event] = []
        self.threads: list[threading.Thread] = []

    def _call(self, stop: threading.Event) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.post(f"{self.url}/search", json={"queries": [self.query], "k": 3}, timeout=60)
                    ok = r.status_code == 200 and [h["id"] for h in r.json()["results"][0]] == self.expected
                    self.seen["ok" if ok else f"{r.status_code}: {r.text[:200]}"] += 1
                except requests.RequestException as err:
                    self.seen[type(err).__name__] += 1
                stop.wait(self.pause_s)

    def set_callers(self, count: int) -> None:
        while len(self.threads) < count:
            self.stops.append(threading.Event())
            self.threads.append(threading.Thread(target=self._call, args=(self.stops[-1],)))
            self.threads[-1].start()
        while len(self.threads) > count:
            self.stops.pop().set()
            self.threads.pop().join()


def _wait_replicas(rig, app: str, condition, what: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while not condition(counts := _replicas(rig, app)):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s; replicas: {counts}"
        time.sleep(0.5)
    return time.time()


def test_the_endpoint_scales_its_replicas_up_under_load_and_back_down_without_a_failed_request(rig, job, tmp_path):
    config, _ = job
    index = tmp_path / "index"
    build_index(IndexBuildConfig(run=config.output, output=str(index), shards=2, nprobe=2))
    serve_config = yaml.safe_load((REPO / "cluster" / "serve_config.yaml").read_text())
    port = free_port()
    serve_config["proxy_location"] = "HeadOnly"  # the rig's nodes share one machine's ports
    serve_config["http_options"] = {"host": "127.0.0.1", "port": port}
    app = serve_config["applications"][0]
    # max_inflight 4: the routers' target is 2 searches per replica, so 4 callers ask for 2 of them; a tiny
    # index's search is quick, so the shards aim at 0.5 in flight to see their load at all
    app["args"] = {"index": str(index), "shard_placement": "deployments", "router_replicas": [1, 2],
                   "shard_replicas": [1, 2], "replica_cpus": 0.25, "max_inflight": 4, "shard_target_ongoing": 0.5,
                   "upscale_delay_s": 2,
                   "downscale_delay_s": 10, "look_back_period_s": 5, "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(serve_config))
    _no_workers(rig)
    deployed = subprocess.run([SERVE, "deploy", "--address", rig.dashboard, str(tmp_path / "serve.yaml")],
                              env=cli_env(), capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    start = time.time()
    name = app["name"]
    minimum = _wait_replicas(rig, name, lambda c: len(c) == 3 and all(v == 1 for v in c.values()),
                             "the application up at its minimum", 180)

    query = "passage 7 on rivers"
    searcher = ShardedSearcher(str(index), cache_dir=str(tmp_path / "cache-here"))
    expected = searcher.search(make_encoder(config.encoder).encode_queries([query]), k=3).ids[0]
    load = Load(f"http://127.0.0.1:{port}", query, expected)
    try:
        load.set_callers(4)
        loaded = time.time()
        up = _wait_replicas(rig, name, lambda c: all(v == 2 for v in c.values()),
                            "every deployment at 2 replicas under load", 180)
        load.pause_s = 0.2  # a light load stays: a scale-down must let the requests in flight finish
        load.set_callers(1)
        eased = time.time()
        down = _wait_replicas(rig, name, lambda c: all(v == 1 for v in c.values()),
                              "every deployment back at 1 replica", 180)
        time.sleep(3)
    finally:
        load.set_callers(0)
    assert set(load.seen) == {"ok"} and load.seen["ok"] > 50, load.seen

    launched = [n for n in rig.nodes() if n.started_s >= start]
    TIMELINES["endpoint under load"] = {
        "deployed": 0.0, "replicas_at_minimum": round(minimum - start, 1), "load_4_callers": round(loaded - start, 1),
        "replicas_at_maximum": round(up - start, 1), "load_1_caller_5_per_s": round(eased - start, 1),
        "replicas_back_at_minimum": round(down - start, 1), "requests": load.seen["ok"],
        "nodes_up": sorted(round(n.started_s - start, 1) for n in launched),
        "node_types": sorted(n.node_type for n in launched)}
    print(TIMELINES["endpoint under load"])
    subprocess.run([SERVE, "shutdown", "--address", rig.dashboard, "-y"], env=cli_env(),
                   capture_output=True, timeout=120)
