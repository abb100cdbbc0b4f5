"""A local autoscaling Ray cluster made from the launcher config, to rehearse autoscaling on one machine.

    python -m ray_jobs.local_cluster                       # cluster/aws.yaml's node types, until Ctrl-C
    python -m ray_jobs.local_cluster --idle-timeout-s 15 --max-workers 2 --timeline nodes.jsonl

It runs Ray's fake multi-node provider, the rig of Ray's own autoscaler tests: the head runs the real
autoscaler (monitor), and when it launches a node of some type the provider starts that node's raylet and
agents as local processes; terminating a node kills them. The node types, their `min_workers` and the
head's resources are the launcher config's, so the documented node types are the rehearsed ones; each node
is shrunk to 1 CPU (and 1 GPU for a GPU type) and `max_workers` capped so a laptop holds a few. The GPU is
a resource label only: the actors it admits find no CUDA and run on the CPU.

Two settings the rig needs that a cloud cluster does not: `use_node_id_as_ip` (every fake node has the
machine's IP, and the autoscaler finds idle nodes by IP: without it no node is ever released) and a
short heartbeat timeout (a node whose raylet died is replaced after it, not after 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ray_jobs.common import free_port, session_processes

LAUNCHER_CONFIG = Path(__file__).resolve().parents[1] / "cluster" / "aws.yaml"
FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider tags its head with this type name
NODE_TYPE_LABEL = "xdr-node-type"  # each node carries its type as a label, so a watcher can tell them apart
RAY_CLI = str(Path(sys.executable).parent / "ray")


def rehearsal_config(launcher: dict[str, Any], gcs_address: str, *, max_workers_per_type: int = 2,
                     idle_timeout_s: float = 15.0, object_store_bytes: int = 200 * 2**20) -> dict[str, Any]:
    """The fake-provider autoscaling config for a launcher config: the same worker types (names,
    `min_workers`, GPU or not) at 1 CPU and at most 1 GPU each, `max_workers` capped, the head's CPUs as
    configured, and a short idle timeout."""
    types = launcher["available_node_types"]
    head_type = launcher["head_node_type"]
    missing = [name for name, spec in types.items() if name != head_type and "CPU" not in spec.get("resources", {})]
    if missing:
        raise ValueError(f"node types {missing} declare no CPU in `resources`: the rig shrinks the declared "
                         "resources, so write what each instance type has (e.g. {CPU: 8, GPU: 1})")
    node_types: dict[str, Any] = {FAKE_HEAD_TYPE: {
        "resources": {"CPU": types[head_type].get("resources", {}).get("CPU", 1),
                      "object_store_memory": object_store_bytes},
        "node_config": {}, "max_workers": 0}}
    total_max = 0
    for name, spec in types.items():
        if name == head_type:
            continue
        declared = spec["resources"]
        resources = {"CPU": min(declared["CPU"], 1), "object_store_memory": object_store_bytes}
        if declared.get("GPU", 0) > 0:
            resources["GPU"] = 1
        maximum = min(spec.get("max_workers", max_workers_per_type), max_workers_per_type)
        total_max += maximum
        node_types[name] = {"resources": resources, "node_config": {}, "labels": {NODE_TYPE_LABEL: name},
                            "min_workers": min(spec.get("min_workers", 0), maximum), "max_workers": maximum}
    return {
        "cluster_name": f"{launcher.get('cluster_name', 'xdr')}-rehearsal",
        "max_workers": total_max,
        "upscaling_speed": launcher.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_s / 60,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ray"},
        "available_node_types": node_types,
        "head_node_type": FAKE_HEAD_TYPE,
        **{key: [] for key in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                               "setup_commands", "head_setup_commands", "worker_setup_commands",
                               "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {}, "file_mounts_sync_continuously": False,
    }


@dataclass
class Node:
    """One node as the cluster's state API reports it."""

    node_id: str
    node_type: str  # the launcher config's type name; "head" for the head
    alive: bool
    resources: dict[str, float]
    started_s: float  # epoch seconds
    ended_s: float | None


@dataclass
class ClusterState:
    """What a running cluster reports through its dashboard's HTTP API (state, jobs, Serve)."""

    dashboard: str  # http://host:port

    def api(self, path: str) -> Any:
        """GET a path of the dashboard's API with the cluster's token."""
        token = auth_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with urllib.request.urlopen(urllib.request.Request(f"{self.dashboard}{path}", headers=headers),
                                    timeout=10) as response:
            return json.load(response)

    def nodes(self) -> list[Node]:
        """Every node the cluster has had, alive or dead."""
        rows = self.api("/api/v0/nodes?detail=1&limit=1000")["data"]["result"]["result"]
        return [Node(node_id=row["node_id"], alive=row["state"] == "ALIVE", resources=row["resources_total"],
                     node_type="head" if row["is_head_node"] else row["labels"].get(NODE_TYPE_LABEL, "?"),
                     started_s=row["start_time_ms"] / 1000,
                     ended_s=row["end_time_ms"] / 1000 if row.get("end_time_ms") else None) for row in rows]

    def wait_for(self, what: str, condition, timeout_s: float, poll_s: float = 1.0) -> list[Node]:
        """Polls the nodes until `condition(nodes)` holds; raises TimeoutError naming `what` otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                nodes = self.nodes()
                if condition(nodes):
                    return nodes
            except OSError:
                nodes = []
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not seen within {timeout_s:.0f} s; nodes: "
                                   f"{[(n.node_type, n.node_id[-5:], n.alive) for n in nodes]}")
            time.sleep(poll_s)


def auth_token() -> str | None:
    """The token Ray's clients send (Ray 2.60 starts clusters with token authentication): RAY_AUTH_TOKEN,
    else the file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.exists() else None


def ensure_auth_token() -> None:
    """`ray start` refuses to start a head without a token, and a fresh machine has none: create
    ~/.ray/auth_token as Ray advises for local development (`ray get-auth-token --generate`)."""
    if auth_token() is None:
        subprocess.run([RAY_CLI, "get-auth-token", "--generate"], env=cli_env(), check=True, capture_output=True,
                       timeout=120)


def cli_env() -> dict[str, str]:
    """The environment for a `ray`/`serve` CLI or a driver that talks to a token-authenticated cluster."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token"}  # Ray's default; its CLI reads ~/.ray/auth_token only when it is set
    env.pop("RAY_ADDRESS", None)
    return env


class LocalAutoscalingCluster:
    """`ray start --head --autoscaling-config=<rehearsal config>` in its own process session; `stop()` ends
    the head, the autoscaler and every node it launched."""

    def __init__(self, launcher_config: Path = LAUNCHER_CONFIG, workdir: Path | None = None, *,
                 max_workers_per_type: int = 2, idle_timeout_s: float = 15.0, heartbeat_timeout_s: int = 10,
                 update_interval_s: int = 1):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="xdr-local-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.launcher = yaml.safe_load(Path(launcher_config).read_text())
        self.max_workers_per_type, self.idle_timeout_s = max_workers_per_type, idle_timeout_s
        self.heartbeat_timeout_s, self.update_interval_s = heartbeat_timeout_s, update_interval_s
        self.process: subprocess.Popen | None = None
        self.gcs_address = ""
        self.state = ClusterState("")
        self.head_log = self.workdir / "ray-head.log"

    def start(self, timeout_s: float = 120.0) -> LocalAutoscalingCluster:
        from ray._private.services import get_node_ip_address

        ensure_auth_token()
        port, dashboard_port = free_port(), free_port()
        # the fake nodes join the GCS at this address and pick the machine's IP, so the head uses it too
        self.gcs_address = f"{get_node_ip_address()}:{port}"
        self.state = ClusterState(f"http://127.0.0.1:{dashboard_port}")
        config = rehearsal_config(self.launcher, self.gcs_address, max_workers_per_type=self.max_workers_per_type,
                                  idle_timeout_s=self.idle_timeout_s)
        config_path = self.workdir / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        head = config["available_node_types"][FAKE_HEAD_TYPE]["resources"]
        env = {**cli_env(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": str(self.update_interval_s),
               "AUTOSCALER_HEARTBEAT_TIMEOUT_S": str(self.heartbeat_timeout_s)}
        cmd = [RAY_CLI, "start", "--head", "--block", f"--port={port}", f"--autoscaling-config={config_path}",
               f"--num-cpus={head['CPU']}", "--num-gpus=0", f"--object-store-memory={head['object_store_memory']}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               "--disable-usage-stats"]
        with open(self.head_log, "wb") as log:
            self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the head exited with {self.process.returncode}: "
                                   f"{self.head_log.read_text()[-2000:]}")
            try:
                self.state.nodes()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"the head's dashboard did not answer in {timeout_s:.0f} s") from None
                time.sleep(0.5)

    def stop(self) -> None:
        """Ends the head's session: SIGTERM, then SIGKILL to what is left of it and of the nodes launched."""
        if self.process is None:
            return
        import psutil

        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:  # a graceful stop takes half a minute on 2 cores; nothing here needs it
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for proc in session_processes(self.process.pid):  # the nodes' processes: the autoscaler's children
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.process = None

    def __enter__(self) -> LocalAutoscalingCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def write_timeline(state: ClusterState, path: Path, stop, poll_s: float = 1.0) -> None:
    """Appends a JSON line to `path` (and says so on stdout) each time a node comes up or goes, until
    `stop()` is true."""
    seen: dict[str, bool] = {}
    with open(path, "a", encoding="utf-8") as out:
        while not stop():
            try:
                nodes = state.nodes()
            except OSError:
                nodes = []
            for node in nodes:
                if seen.get(node.node_id) != node.alive:
                    seen[node.node_id] = node.alive
                    event = {"t": round(time.time(), 3), "event": "up" if node.alive else "gone",
                             "node_type": node.node_type, "node_id": node.node_id,
                             "resources": {k: v for k, v in node.resources.items() if k in ("CPU", "GPU")}}
                    out.write(json.dumps(event) + "\n")
                    out.flush()
                    print(f"{time.strftime('%H:%M:%S')} node {event['event']}: {node.node_type} {node.node_id[-5:]}",
                          flush=True)
            time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local autoscaling Ray cluster with the launcher config's "
                                     "node types (Ray's fake multi-node provider), until Ctrl-C.")
    parser.add_argument("--launcher-config", type=Path, default=LAUNCHER_CONFIG)
    parser.add_argument("--max-workers", type=int, default=2, help="cap on each node type's max_workers")
    parser.add_argument("--idle-timeout-s", type=float, default=15.0,
                        help="an idle worker node is released after this long")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the generated config, the head's log and the timeline (default: a new one "
                        "under the temporary folder)")
    parser.add_argument("--timeline", type=Path, default=None,
                        help="append node up/gone events to this file (default: timeline.jsonl in the work folder)")
    args = parser.parse_args(argv)
    cluster = LocalAutoscalingCluster(args.launcher_config, args.workdir, max_workers_per_type=args.max_workers,
                                      idle_timeout_s=args.idle_timeout_s)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    with cluster:
        dashboard = cluster.state.dashboard
        print(f"local autoscaling cluster up: dashboard {dashboard}, GCS {cluster.gcs_address}\n"
              f"  config: {cluster.workdir / 'autoscaling.yaml'}\n"
              f"  RAY_AUTH_MODE=token ray job submit --address {dashboard} --working-dir . -- "
              "python -m ray_jobs.index_corpus --config ... --resources.gpus_per_actor=1\n"
              f"  RAY_AUTH_MODE=token ray status --address {cluster.gcs_address}\n"
              "Ctrl-C stops it and every node it launched.", flush=True)
        try:
            write_timeline(cluster.state, args.timeline or cluster.workdir / "timeline.jsonl", lambda: bool(stopping))
        except KeyboardInterrupt:
            pass
        print("stopping the cluster", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
