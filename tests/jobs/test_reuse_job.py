"""Reuse by content in the indexing job, on a real local Ray with the tiny models: a new corpus version
indexed with reuse_from (to SeaweedFS S3; and killed mid-run, then resumed) equals a run from scratch, and
the generator and encoder actors see only the changed and new passages.

The tiny transformer encoder's float rounding depends on the batch a passage is padded with, so the
embeddings of passages encoded in other batches are compared with a tolerance; the reused ones are the
earlier run's bytes. (tests/library/test_reuse.py checks byte equality with the stand-in models.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from benchmarks.synthetic_corpus import write_corpus, write_next_version
from ray_jobs.index_corpus import run_indexing
from tests.support.jobcheck import table_rows
from tests.support.jobs import make_config, run_and_sigkill_when
from tests.support.paths import REPO
from xdr.io.storage import Storage

pytestmark = pytest.mark.slow


def _config(models, corpus, output, **sections):
    return make_config(models, corpus, output, corpus={"passages_per_part": 8, "max_reject_fraction": 0.2},
                       **sections)


@pytest.fixture(scope="module")
def versions(ray_local, tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("job-versions")
    write_corpus(root / "v1", 72, 2, bad_every=1000, duplicates=2)
    write_next_version(root / "v1", root / "v2", edited=0.1, added=0.05, removed=0.05, moved=0.1)
    run_indexing(_config(tiny_models, root / "v1", root / "run-v1"))
    run_indexing(_config(tiny_models, root / "v2", root / "run-v2"))
    return root


def _read(uri: str) -> pa.Table:
    storage = Storage()
    return pa.concat_tables([storage.read_table(f) for f in storage.list_files(uri, ".parquet")])


def _passages(uri) -> dict:
    return {r["id"]: (r["title"], r["text"]) for r in _read(str(uri) + "/passages").to_pylist()}


def _check_equals_scratch(run: str, versions) -> dict[str, int]:
    """Queries equal, embeddings reused byte for byte or within rounding of the run from scratch; returns
    the counts worked out from the two versions' passages."""
    old, new = _passages(versions / "run-v1"), _passages(versions / "run-v2")
    unchanged = {pid for pid, content in new.items() if old.get(pid) == content}
    assert _read(f"{run}/passages").equals(pq.read_table(versions / "run-v2" / "passages"))
    assert _read(f"{run}/queries").to_pylist() == pq.read_table(versions / "run-v2" / "queries").to_pylist()
    got, scratch = table_rows(_read(f"{run}/embeddings")), table_rows(pq.read_table(versions / "run-v2" / "embeddings"))
    first = table_rows(pq.read_table(versions / "run-v1" / "embeddings"))
    assert list(got) == list(scratch)  # every passage once, in corpus order
    for pid, vector in got.items():
        np.testing.assert_allclose(vector, scratch[pid], rtol=1e-5, atol=1e-6)
        if pid in unchanged:
            assert np.array_equal(vector, first[pid]), f"{pid} was recomputed, not reused"
    return {"reused": len(unchanged), "changed": sum(1 for pid in new if pid in old) - len(unchanged),
            "added": sum(1 for pid in new if pid not in old), "dropped": sum(1 for pid in old if pid not in new)}


def test_reuse_into_s3_equals_scratch_and_the_actors_see_only_changed_and_new_passages(versions, tiny_models,
                                                                                       s3_server):
    run = f"s3://{s3_server.bucket}/reuse/v2"
    manifest = run_indexing(_config(tiny_models, versions / "v2", run, reuse_from=[str(versions / "run-v1")]))
    expected = _check_equals_scratch(run, versions)
    assert expected["changed"] and expected["added"] and expected["dropped"]
    reuse, counts = manifest["reuse"], manifest["counts"]
    assert {k: reuse[k] for k in ("changed", "added", "dropped")} == {k: expected[k] for k in
                                                                      ("changed", "added", "dropped")}
    assert reuse["reused_queries"] == reuse["reused_embeddings"] == expected["reused"]
    assert counts["passages_generated"] == counts["passages_encoded"] == expected["changed"] + expected["added"]
    assert counts["queries_encoded"] == (expected["changed"] + expected["added"]) * 3 * 2  # all non-empty here
    assert reuse["generator_calls_saved"] == expected["reused"] * 3 * 2


def test_a_reuse_run_killed_mid_run_resumes_to_the_same_result(versions, tiny_models, ray_local, tmp_path):
    run = tmp_path / "reuse"
    config = _config(tiny_models, versions / "v2", run, reuse_from=[str(versions / "run-v1")])
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    command = [sys.executable, "-m", "ray_jobs.index_corpus", "--config", str(config_path)]
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(REPO)}
    run_and_sigkill_when(command, env, lambda: (run / "embeddings" / "part-00000.parquet").exists(), 240,
                         "committed part")
    committed = len(list((run / "embeddings").glob("part-*.parquet")))
    assert (run / "reuse.json").exists() and committed < len(list((run / "passages").glob("part-*.parquet")))

    rerun = subprocess.run(command, cwd=REPO, env={**env, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address},
                           capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "reuse plan committed by an earlier attempt" in rerun.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["attempts"] == 2 and manifest["counts"]["parts_resumed"] >= committed
    _check_equals_scratch(str(run), versions)
