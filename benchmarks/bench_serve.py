"""The search endpoint side by side with its own parts, under the same load (loopback only).

    python benchmarks/bench_serve.py --json out.json               # demo index, every path, 1/8/32/64 clients
    python benchmarks/bench_serve.py --index /tmp/xdr-scale/run-1000000/index --json out.json
    python benchmarks/bench_serve.py --tiny                        # a few seconds a path: what the test runs

Paths, one question a request, k=10:
- library: the index's encoder and ShardedSearcher in this process, one question a call, one caller
  (the work itself, no serving);
- uvicorn: one uvicorn process with a hand-written FastAPI app over the same library calls
  (benchmarks/serve_baseline.py: what a user writes without Ray);
- serve-noop: a Ray Serve FastAPI ingress that answers a fixed body (Serve's own floor);
- serve-noop-body: the same, after reading and parsing the request body (Serve fetches a body from its
  proxy in a call of its own: the floor of any endpoint that reads its request);
- xdr: `xdr serve` as configured by default (for an index that fits: shards searched in the Router);
- xdr-separate-encoder: the query encoder in its own deployment (the layout for GPU encoder replicas);
- xdr-shard-deployments: each shard in its own deployment (the layout for indexes that do not fit).
The Serve paths run once per Serve setting, each on its own local Ray in a child process (Serve reads its
settings when its processes start): `default` (Serve's Python proxy: `ingress: proxy`), `throughput`
(RAY_SERVE_THROUGHPUT_OPTIMIZED=1 alone, still through the Python proxy's port) and `haproxy` (what
`xdr serve` sets for its default ingress: HAProxy forwarding to each ingress replica's own HTTP server).

Load: `wrk` (a C load generator, one thread; `apt-get install wrk`), closed loop: each of N connections
sends its next question when the answer to the last one came. wrk's own CPU time is reported per level:
it shares the cores with what it measures. Before the load, each path's answers to every question are
compared with the library's (same ids in the same order).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ray_jobs import serve_proxy  # noqa: E402 -- after the path, for a run from a clone without an install

QUESTIONS = [
    "What is the highest mountain in Africa?", "Wer hat das Penicillin entdeckt?",
    "Какая самая длинная река в Европе?", "日本で一番高い山は何ですか？", "한글은 언제 만들어졌습니까?",
    "ما هي أكبر صحراء حارة في العالم؟", "¿Quién pintó la Mona Lisa?", "Quelle est la capitale de l'Australie?",
    "Qual é o maior rio do mundo?", "Kuka keksi puhelimen?", "ใครเป็นผู้ค้นพบเพนิซิลลิน",
    "Ai là người phát minh ra điện thoại?",
]
SERVE_SETTINGS = {
    "default": {},  # Serve's defaults: the Python proxy (with xdr's middleware, as `ingress: proxy` runs it)
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},  # Ray's switch alone, through the Python proxy's port
    "haproxy": serve_proxy.ingress_env("haproxy"),  # what `xdr serve` sets for its default ingress
}
SERVE_PATHS = ["serve-noop", "serve-noop-body", "xdr", "xdr-separate-encoder", "xdr-shard-deployments"]

# wrk calls request() for every request and response() for every answer; done() runs once at the end and
# prints one JSON line. Counters live in each wrk thread's Lua state and are collected through setup().
WRK_SCRIPT = """
local bodies = {%(bodies)s}
local headers = {["Content-Type"] = "application/json"}
local i = 0
n200, n500, n503, nother = 0, 0, 0, 0
request = function()
  i = i + 1
  return wrk.format("POST", "/search", headers, bodies[(i %% #bodies) + 1])
end
response = function(status, hdrs, body)
  if status == 200 then n200 = n200 + 1 elseif status == 503 then n503 = n503 + 1
  elseif status == 500 then n500 = n500 + 1 else nother = nother + 1 end
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local ok, shed, s500, other = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("n200"); shed = shed + t:get("n503"); s500 = s500 + t:get("n500"); other = other + t:get("nother")
  end
  local e = summary.errors
  io.write(string.format('XDR-WRK {"requests": %%d, "duration_us": %%d, "ok": %%d, "shed_503": %%d, '
    .. '"status_500": %%d, "other_status": %%d, "socket_errors": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, ok, shed, s500, other, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk_script(k: int) -> Path:
    bodies = ", ".join("[==[" + json.dumps({"queries": [q], "k": k}) + "]==]" for q in QUESTIONS)
    path = Path(tempfile.mkdtemp(prefix="xdr-wrk-")) / "search.lua"
    path.write_text(WRK_SCRIPT % {"bodies": bodies}, encoding="utf-8")
    return path


def wrk_level(url: str, clients: int, duration_s: float, script: Path) -> dict:
    """One load level: wrk's counts and latency percentiles, and the CPU seconds wrk itself used."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(["wrk", "-t1", f"-c{clients}", f"-d{duration_s:g}s", "--timeout", "30s",
                                 "-s", str(script), f"{url}/search"], stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith("XDR-WRK ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    r = json.loads(line.removeprefix("XDR-WRK "))
    seconds = r["duration_us"] / 1e6
    return {"clients": clients, "qps": round(r["ok"] / seconds, 1), "p50_ms": round(r["p50_us"] / 1000, 2),
            "p99_ms": round(r["p99_us"] / 1000, 2), "max_ms": round(r["max_us"] / 1000, 2), "ok": r["ok"],
            "shed_503": r["shed_503"], "status_500": r["status_500"],
            "errors": r["status_500"] + r["other_status"] + r["socket_errors"],
            "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "seconds": round(seconds, 2)}


def answers(url: str, k: int) -> list[list[str]]:
    import requests

    out = []
    for question in QUESTIONS:
        response = requests.post(f"{url}/search", json={"queries": [question], "k": k}, timeout=60)
        response.raise_for_status()
        out.append([hit["id"] for hit in response.json()["results"][0]])
    return out


def load_path(name: str, url: str, args, expected: list[list[str]] | None) -> dict:
    """Check a path's answers, warm it, then run every load level."""
    row = {"path": name, "answers_match": None if expected is None else answers(url, args.k) == expected}
    wrk_level(url, max(args.clients), min(2.0, args.duration), args.script)  # warm-up, not recorded
    row["levels"] = []
    for clients in args.clients:
        level = wrk_level(url, clients, args.duration, args.script)
        row["levels"].append(level)
        print(f"  {name:<24} {clients:>3} clients: {level['qps']:>7} q/s  p50 {level['p50_ms']:>7} ms  "
              f"p99 {level['p99_ms']:>7} ms  errors {level['errors']}  503 {level['shed_503']}", flush=True)
    return row


def library(index: str, k: int, duration_s: float):
    """(the one-caller row, the expected ids per question)."""
    from xdr.config import EncoderConfig
    from xdr.index.search import ShardedSearcher
    from xdr.io.storage import Storage
    from xdr.models.encoder import make_encoder

    manifest = json.loads(Storage().read_bytes(f"{index}/manifest.json"))
    encoder = make_encoder(EncoderConfig.model_validate(manifest["encoder"]))
    searcher = ShardedSearcher(index)
    expected = [searcher.search(encoder.encode_queries([q]), k).ids[0] for q in QUESTIONS]
    expected = [[i for i in ids if i is not None] for ids in expected]
    latencies, deadline = [], time.perf_counter() + duration_s
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        searcher.search(encoder.encode_queries([QUESTIONS[len(latencies) % len(QUESTIONS)]]), k)
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    level = {"clients": 1, "qps": round(len(latencies) / sum(latencies), 1),
             "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
             "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2), "ok": len(latencies),
             "shed_503": 0, "errors": 0}
    print(f"  {'library':<24}   1 caller : {level['qps']:>7} q/s  p50 {level['p50_ms']:>7} ms", flush=True)
    return {"path": "library", "answers_match": True, "levels": [level]}, expected, manifest


def uvicorn_path(args, expected) -> dict:
    from ray_jobs.common import free_port

    port = free_port()
    env = {**os.environ, "XDR_BENCH_INDEX": args.index}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "serve_baseline:app", "--app-dir",
                             str(REPO / "benchmarks"), "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning", "--no-access-log"], env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc)
        return load_path("uvicorn", url, args, expected)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_up(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 120) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with {proc.returncode}")
        try:
            if requests.post(f"{url}/search", json={"queries": ["warm up"], "k": 1}, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def serve_group(args) -> None:
    """Child process: one Serve setting, every Serve path, on its own local Ray; rows to --group-out."""
    import ray
    import serve_baseline
    from ray import serve

    from ray_jobs import serve_app
    from ray_jobs.common import free_port, start_local_ray
    from xdr.config import ServeConfig

    expected = json.loads(Path(args.group_out).read_text(encoding="utf-8"))["expected"]
    serve_proxy.configure_ingress("proxy")  # the middleware; the setting's own variables came with the process
    start_local_ray(2, log_file=Path(args.work) / f"ray-{args.serve_group}.log")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for path in args.paths:
            if path not in SERVE_PATHS:
                continue
            started = time.monotonic()
            if path.startswith("serve-noop"):
                serve.run(serve_baseline.noop_app(read_body=path == "serve-noop-body"), name="bench",
                          route_prefix="/")
            else:
                config = ServeConfig(index=args.index, port=port, replica_cpus=0.1, router_replicas=(1, 1),
                                     encoder_replicas=(1, 1), shard_replicas=(1, 1),
                                     separate_encoder=path == "xdr-separate-encoder",
                                     shard_placement="deployments" if path == "xdr-shard-deployments" else "auto")
                serve_app.start(config, name="bench")
            up_s = time.monotonic() - started
            row = load_path(f"{path} [{args.serve_group}]", url, args,
                            None if path.startswith("serve-noop") else expected)
            row.update(path=path, serve_settings=args.serve_group, up_s=round(up_s, 1))
            started = time.monotonic()
            serve_app.stop("bench")
            row["delete_s"] = round(time.monotonic() - started, 1)
            rows.append(row)
        started = time.monotonic()
        serve.shutdown()
        shutdown_s = round(time.monotonic() - started, 1)
    finally:
        ray.shutdown()
    Path(args.group_out).write_text(json.dumps({"rows": rows, "shutdown_s": shutdown_s}), encoding="utf-8")


def run_serve_settings(args, setting: str, expected) -> dict:
    out = Path(args.work) / f"group-{setting}.json"
    out.write_text(json.dumps({"expected": expected}), encoding="utf-8")
    command = [sys.executable, __file__, "--serve-group", setting, "--group-out", str(out), "--index", args.index,
               "--work", str(args.work), "--duration", str(args.duration), "-k", str(args.k),
               "--clients", *map(str, args.clients), "--paths", *args.paths]
    # the replicas of the floor app import serve_baseline: Ray's workers inherit this PYTHONPATH
    path = os.pathsep.join(p for p in (str(REPO / "benchmarks"), str(REPO), os.environ.get("PYTHONPATH")) if p)
    subprocess.run(command, env={**os.environ, **SERVE_SETTINGS[setting], "PYTHONPATH": path}, check=True)
    return json.loads(out.read_text(encoding="utf-8"))


def ratios(rows: list[dict]) -> list[dict]:
    """Each xdr row against the Serve floors of the same setting and against the uvicorn app, per level."""
    by = {(r["path"], r.get("serve_settings")): {lv["clients"]: lv for lv in r["levels"]} for r in rows}
    uvicorn = by.get(("uvicorn", None), {})
    out = []
    for (path, setting), levels in by.items():
        if not path.startswith("xdr"):
            continue
        floor, floor_body = by.get(("serve-noop", setting), {}), by.get(("serve-noop-body", setting), {})
        for clients, lv in levels.items():
            out.append({"path": path, "serve_settings": setting, "clients": clients,
                        "vs_serve_floor": _ratio(lv, floor.get(clients)),
                        "vs_serve_floor_body": _ratio(lv, floor_body.get(clients)),
                        "vs_uvicorn": _ratio(lv, uvicorn.get(clients)),
                        "p50_over_floor_ms": (round(lv["p50_ms"] - floor[clients]["p50_ms"], 2)
                                              if clients in floor else None)})
    return out


def _ratio(level: dict, other: dict | None) -> float | None:
    return round(level["qps"] / other["qps"], 2) if other and other["qps"] else None


def print_tables(result: dict) -> None:
    clients = result["clients"]
    print(f"\nSearch endpoint paths, index {result['index']} ({result['vectors']} vectors, {result['shards']} "
          f"shards), k={result['k']}, {result['duration_s']:g} s a level, wrk on loopback\n")
    print("| path | Serve settings | " + " | ".join(f"{c} clients q/s (p50 / p99 ms)" for c in clients)
          + " | answers = library |")
    print("|---|---|" + "---:|" * len(clients) + "---|")
    for row in result["rows"]:
        levels = {lv["clients"]: lv for lv in row["levels"]}
        cells = [f"{lv['qps']} ({lv['p50_ms']} / {lv['p99_ms']})" + (f", {lv['errors']} err" if lv["errors"] else "")
                 if (lv := levels.get(c)) else "—" for c in clients]
        print(f"| {row['path']} | {row.get('serve_settings') or '—'} | " + " | ".join(cells)
              + f" | {row['answers_match']} |")
    print("\n| path | Serve settings | clients | × Serve floor | × floor reading the body | × uvicorn app "
          "| p50 − floor's p50 (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in result["ratios"]:
        print(f"| {r['path']} | {r['serve_settings']} | {r['clients']} | {r['vs_serve_floor']} "
              f"| {r['vs_serve_floor_body']} | {r['vs_uvicorn']} | {r['p50_over_floor_ms']} |")
    print("\nwrk's own CPU seconds per level: " + "; ".join(
        f"{row['path']}{'/' + row['serve_settings'] if row.get('serve_settings') else ''} "
        + ",".join(str(lv.get("client_cpu_s", "-")) for lv in row["levels"]) for row in result["rows"]))
    print("Serve shutdown (s): " + ", ".join(f"{s}: {v}" for s, v in result["shutdown_s"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="a built index (default: build the demo index under --work)")
    parser.add_argument("--work", type=Path, default=REPO / "bench-output" / "serve")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds a level")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--paths", nargs="+", choices=["library", "uvicorn", *SERVE_PATHS])
    parser.add_argument("--serve-settings", nargs="+", choices=list(SERVE_SETTINGS))
    parser.add_argument("--tiny", action="store_true", help="1 and 4 clients, 2 s a level; paths library, uvicorn, "
                        "serve-noop and xdr, Serve setting haproxy (unless --paths, --serve-settings say)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve-group", help=argparse.SUPPRESS)
    parser.add_argument("--group-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.clients, args.duration = [1, 4], 2.0
        args.paths = args.paths or ["library", "uvicorn", "serve-noop", "xdr"]
        args.serve_settings = args.serve_settings or ["haproxy"]
    args.paths = args.paths or ["library", "uvicorn", *SERVE_PATHS]
    args.serve_settings = args.serve_settings or list(SERVE_SETTINGS)
    args.script = wrk_script(args.k)
    if args.serve_group:
        return serve_group(args)
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        sys.exit("bench_serve needs wrk, a C load generator: apt-get install wrk")
    args.work.mkdir(parents=True, exist_ok=True)
    args.index = args.index or demo_index(args.work)

    row, expected, manifest = library(args.index, args.k, args.duration)
    rows = [row] if "library" in args.paths else []
    if "uvicorn" in args.paths:
        rows.append(uvicorn_path(args, expected))
    shutdown = {}
    for setting in args.serve_settings:
        group = run_serve_settings(args, setting, expected)
        rows += group["rows"]
        shutdown[setting] = group["shutdown_s"]
    result = {"index": args.index, "vectors": manifest["vectors"], "shards": len(manifest["shards"]),
              "factory": manifest["factory"], "k": args.k, "duration_s": args.duration, "clients": args.clients,
              "load": "wrk -t1, closed loop, one question a request", "cpus": os.cpu_count(),
              "rows": rows, "ratios": ratios(rows), "shutdown_s": shutdown}
    print_tables(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


def demo_index(work: Path) -> str:
    """The demo's index (sample corpus, tiny generator, USE encoder), built once under `work` on a local Ray."""
    import ray
    import yaml

    from ray_jobs import build_index, index_corpus
    from ray_jobs.cli import DEMO_CONFIG
    from ray_jobs.common import start_local_ray
    from xdr.config import IndexBuildConfig, IndexingJobConfig
    from xdr.models import tiny as tiny_models

    index = work / "run" / "index"
    if (index / "manifest.json").exists():
        return str(index)
    models = tiny_models.build_tiny_models(work / "models")
    data = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    data.update(output=str(work / "run"))
    data["corpus"]["path"] = str(tiny_models.SAMPLE_CORPUS)
    data["generator"]["model"] = str(models["generator"])
    start_local_ray(2, log_file=work / "ray-build.log")
    try:
        index_corpus.run_indexing(IndexingJobConfig.model_validate(data))
        build_index.build_index(IndexBuildConfig(run=str(work / "run"), shards=2, nprobe=4))
    finally:
        ray.shutdown()
    return str(index)


if __name__ == "__main__":
    main()
