"""A running endpoint moved to a new corpus version's index under load (8 clients on loopback): every
request answered, every answer wholly from one index version (equal to that version's in-process search,
so no answer merges shards of two versions), and after the switch no answer holds a removed passage.
Both shard placements: the shards searched in the Router (moved by `xdr serve-switch`, the documented
command), and one deployment per shard (moved by serve_app.switch)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
import requests

from benchmarks.synthetic_corpus import write_corpus, write_next_version
from tests.support.indexes import build_manifest
from tests.support.paths import REPO
from tests.support.pipeline import index_here
from xdr.config import EncoderConfig, IndexingJobConfig, ServeConfig
from xdr.index.search import ShardedSearcher
from xdr.models.encoder import make_encoder

pytestmark = pytest.mark.slow
ENCODER = "stand-in:hashing-64"
CLIENTS = 8


def _run_config(corpus, output, **fields) -> IndexingJobConfig:
    return IndexingJobConfig.model_validate({
        "output": str(output), "corpus": {"path": str(corpus), "passages_per_part": 100, "max_reject_fraction": 0.1},
        "generator": {"model": "stand-in:lead-words", "languages": ["ar"], "queries_per_language": 1},
        "encoder": {"model": ENCODER}, "fusion": {"alpha": 0.3}, **fields})


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """Version 1's index, and version 2's: reuse from version 1, quantizer refreshed from its index."""
    root = tmp_path_factory.mktemp("switch")
    write_corpus(root / "v1", 1_000, 2, bad_every=10_000, duplicates=0)
    write_next_version(root / "v1", root / "v2", removed=0.05)
    index_here(_run_config(root / "v1", root / "run-v1"))
    index_here(_run_config(root / "v2", root / "run-v2", reuse_from=[str(root / "run-v1")]))
    build_manifest(str(root / "run-v1"), str(root / "index-v1"), "IVF16,Flat", 2, nprobe=16)
    build_manifest(str(root / "run-v2"), str(root / "index-v2"), None, 2, nprobe=16,
                   quantizer_from=str(root / "index-v1"))
    ids = {v: set(pq.read_table(root / f"run-v{v}" / "passages")["id"].to_pylist()) for v in (1, 2)}
    removed = ids[1] - ids[2]
    passages = pq.read_table(root / "run-v1" / "passages").to_pylist()
    # questions that find removed passages in version 1 (their first words), and others
    questions = [" ".join(p["text"].split()[:8]) for p in passages if p["id"] in removed][:6]
    questions += [" ".join(p["text"].split()[:8]) for p in passages[:6]]
    encoder = make_encoder(EncoderConfig(model=ENCODER))
    expected = {}
    for v in (1, 2):
        hits = ShardedSearcher(str(root / f"index-v{v}")).search(encoder.encode_queries(questions), k=5, nprobe=16)
        expected[v] = [[pid for pid in row if pid is not None] for row in hits.ids]
    return root, removed, questions, expected


@pytest.fixture(scope="module")
def port(ray_local):
    """One HTTP port for the module's endpoints (Serve keeps the port it started with), Serve stopped after."""
    from ray import serve

    from ray_jobs.common import free_port

    yield free_port()
    serve.shutdown()


def _load(url: str, questions: list[str], stop: threading.Event, answers: list, failures: list) -> None:
    session = requests.Session()
    i = 0
    while not stop.is_set():
        q = i % len(questions)
        i += 1
        sent = time.monotonic()
        try:
            r = session.post(f"{url}/search", json={"queries": [questions[q]], "k": 5}, timeout=60)
        except requests.RequestException as err:
            failures.append(repr(err))
            continue
        if r.status_code != 200:
            failures.append(f"{r.status_code} {r.text[:200]}")
            continue
        body = r.json()
        answers.append((sent, q, body["index_version"], [h["id"] for h in body["results"][0]]))


def _switch_under_load(url: str, questions: list[str], do_switch) -> tuple[list, list, float]:
    stop, answers, failures = threading.Event(), [], []
    clients = [threading.Thread(target=_load, args=(url, questions, stop, answers, failures)) for _ in range(CLIENTS)]
    for c in clients:
        c.start()
    try:
        time.sleep(2)
        do_switch()
        switched = time.monotonic()
        time.sleep(2)
    finally:
        stop.set()
        for c in clients:
            c.join()
    return answers, failures, switched


def _check(answers, failures, switched, versions, removed, expected) -> None:
    assert failures == []
    by_version = {versions[v]: v for v in (1, 2)}
    assert {a[2] for a in answers} == set(by_version), "both versions answered"
    for _, q, version, ids in answers:  # each answer is one version's answer, whole
        assert ids == expected[by_version[version]][q], (version, q)
    after = [a for a in answers if a[0] > switched]
    assert after and all(a[2] == versions[2] for a in after)
    assert not any(set(a[3]) & removed for a in after)
    assert any(set(ids) & removed for ids in expected[1]), "the questions find removed passages in version 1"


def _versions(url) -> dict:
    return requests.get(f"{url}/info", timeout=30).json()["version"]


def test_xdr_serve_switch_moves_the_endpoint_with_shards_in_the_router(ray_local, indexes, port):
    from ray_jobs import serve_app

    root, removed, questions, expected = indexes
    config = ServeConfig(index=str(root / "index-v1"), port=port, router_replicas=(1, 1), replica_cpus=0.1,
                         shard_placement="router")
    url = serve_app.start(config)
    try:
        v1 = _versions(url)
        command = [sys.executable, "-m", "ray_jobs.cli", "serve-switch", f"--index={root / 'index-v2'}",
                   "--shard_placement=router", "--router_replicas=[1, 1]", "--replica_cpus=0.1",
                   f"--address={ray_local.get_runtime_context().gcs_address}"]
        done = {}
        answers, failures, switched = _switch_under_load(url, questions, lambda: done.update(
            proc=subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)))
        assert done["proc"].returncode == 0, done["proc"].stderr[-3000:]
        v2 = _versions(url)
        assert f"index version {v2}" in done["proc"].stdout and v2 != v1
        _check(answers, failures, switched, {1: v1, 2: v2}, removed, expected)
    finally:
        serve_app.stop("xdr")


def test_switch_with_shard_deployments_starts_the_new_shards_and_removes_the_old(ray_local, indexes, port):
    from ray import serve

    from ray_jobs import serve_app

    root, removed, questions, expected = indexes
    config = ServeConfig(index=str(root / "index-v1"), port=port, router_replicas=(1, 1),
                         shard_replicas=(1, 1), replica_cpus=0.1, shard_placement="deployments")
    url = serve_app.start(config, name="xdr-switch")
    try:
        v1 = _versions(url)
        done = {}
        answers, failures, switched = _switch_under_load(url, questions, lambda: done.update(version=serve_app.switch(
            config.model_copy(update={"index": str(root / "index-v2")}), name="xdr-switch")))
        v2 = done["version"]
        _check(answers, failures, switched, {1: v1, 2: v2}, removed, expected)
        apps = set(serve.status().applications)
        assert serve_app.shards_app_name("xdr-switch", v2) in apps
        assert serve_app.shards_app_name("xdr-switch", v1) not in apps
    finally:
        serve_app.stop("xdr-switch")
