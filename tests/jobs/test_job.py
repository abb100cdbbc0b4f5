"""The indexing job on a real local Ray, against local storage and a real S3 server (SeaweedFS)."""

import hashlib
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_jobs.index_corpus import run_indexing
from tests.support.jobcheck import expected_embeddings, expected_queries, table_rows
from tests.support.jobs import make_config

PASSAGES = [{"id": f"doc{i:02d}", "title": f"Title {i}",
             "text": f"Passage {i} about rivers and mountains. " * (1 + i % 3)} for i in range(19)]


def _corpus_lines(bad=True):
    lines = [json.dumps(p) for p in PASSAGES]
    if bad:
        lines.insert(5, '{"id": "doc03", "text": "a duplicate"}')
    return ("\n".join(lines) + "\n").encode()


def _s3_table(client, bucket, prefix):
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=k)["Body"].read()))
                             for k in keys]), keys


@pytest.mark.slow
def test_full_job_to_s3_read_back_row_by_row(ray_local, s3_server, tiny_models):
    client, bucket = s3_server.client(), s3_server.bucket
    client.put_object(Bucket=bucket, Key="corpus/c.jsonl", Body=_corpus_lines())
    config = make_config(tiny_models, f"s3://{bucket}/corpus/c.jsonl", f"s3://{bucket}/runs/r1",
                         corpus={"max_reject_fraction": 0.1})
    manifest = run_indexing(config)

    passages, _ = _s3_table(client, bucket, "runs/r1/passages/")
    assert passages["id"].to_pylist() == [p["id"] for p in PASSAGES]
    rejects, _ = _s3_table(client, bucket, "runs/r1/rejects/")
    assert [(r["line"], r["reason"].partition(": ")[0]) for r in rejects.to_pylist()] == [(6, "duplicate id")]

    queries, _ = _s3_table(client, bucket, "runs/r1/queries/")
    got_queries = {(r["passage_id"], r["lang"], r["qidx"]): r["text"] for r in queries.to_pylist()}
    assert len(got_queries) == queries.num_rows == 19 * 3 * 2
    assert got_queries == expected_queries(config, PASSAGES)

    embeddings, emb_keys = _s3_table(client, bucket, "runs/r1/embeddings/")
    assert emb_keys == [f"runs/r1/embeddings/part-0000{i}.parquet" for i in range(3)]
    got = table_rows(embeddings)
    assert list(got) == [p["id"] for p in PASSAGES]  # every passage exactly once, in corpus order
    expected = expected_embeddings(config, PASSAGES, got_queries)
    for pid, vector in got.items():
        np.testing.assert_allclose(vector, expected[pid], rtol=1e-4, atol=1e-5)
    assert embeddings["n_queries"].to_pylist() == [6] * 19

    stored = json.loads(client.get_object(Bucket=bucket, Key="runs/r1/manifest.json")["Body"].read())
    assert stored["status"] == "complete" and stored == json.loads(json.dumps(manifest, default=str))
    assert {"rows_read": 20, "passages": 19, "rejects": 1, "embeddings": 19, "queries_generated": 114,
            "parts": 3}.items() <= stored["counts"].items()
    for f in stored["files"]:
        body = client.get_object(Bucket=bucket, Key=f["uri"].split(f"{bucket}/", 1)[1])["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (f["bytes"], f["sha256"])
    assert len(stored["files"]) == 3 * 4 + 1  # four stages of three parts, and validation.json


@pytest.mark.slow
def test_worker_count_and_part_size_do_not_change_results(ray_local, tiny_models, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(_corpus_lines(bad=False))
    one = make_config(tiny_models, corpus, tmp_path / "one")
    two = make_config(tiny_models, corpus, tmp_path / "two", corpus={"passages_per_part": 3},
                      resources={"generator_actors": [2, 2], "encoder_actors": [1, 2]})
    run_indexing(one)
    manifest = run_indexing(two)
    assert manifest["counts"]["parts"] == 7
    q1, q2 = (pq.read_table(tmp_path / name / "queries").to_pylist() for name in ("one", "two"))
    assert q1 == q2
    e1, e2 = (table_rows(pq.read_table(tmp_path / name / "embeddings")) for name in ("one", "two"))
    assert list(e1) == list(e2)
    for pid in e1:
        np.testing.assert_allclose(e1[pid], e2[pid], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_queries_from_an_earlier_run_skips_generation(ray_local, tiny_models, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(_corpus_lines(bad=False))
    first = make_config(tiny_models, corpus, tmp_path / "gen")
    run_indexing(first)
    reuse = make_config(tiny_models, corpus, tmp_path / "reuse", queries_from=str(tmp_path / "gen"),
                        fusion={"alpha": 0.5, "mode": "mean"}, embedding_dtype="float16")
    manifest = run_indexing(reuse)
    assert not (tmp_path / "reuse" / "queries").exists()
    assert manifest["counts"]["queries_generated"] == 0 and manifest["counts"]["queries_fused"] == 114
    table = pq.read_table(tmp_path / "reuse" / "embeddings")
    assert str(table.schema.field("embedding").type.value_type) == "halffloat"
    queries = {(r["passage_id"], r["lang"], r["qidx"]): r["text"]
               for r in pq.read_table(tmp_path / "gen" / "queries").to_pylist()}
    expected = expected_embeddings(reuse, PASSAGES, queries)
    for pid, vector in table_rows(table).items():
        np.testing.assert_allclose(vector, expected[pid], rtol=2e-3, atol=2e-3)  # float16 storage


def test_rerun_with_other_settings_is_refused_before_any_work(tiny_models, tmp_path):
    from xdr.io.manifest import begin_run
    from xdr.io.storage import Storage

    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(_corpus_lines(bad=False))
    begin_run(Storage(), make_config(tiny_models, corpus, tmp_path / "run"))
    changed = make_config(tiny_models, corpus, tmp_path / "run", fusion={"alpha": 0.2})
    with pytest.raises(ValueError, match=r"other settings \(fusion.alpha: 0.01 -> 0.2\)"):
        begin_run(Storage(), changed)
    faster = make_config(tiny_models, corpus, tmp_path / "run", encoder={"batch_size": 7})
    assert begin_run(Storage(), faster)["attempts"] == 2  # speed settings may change on resume


def test_queries_from_must_be_a_finished_run(tiny_models, tmp_path):
    from ray_jobs.index_corpus import check_queries_source
    from xdr.io.storage import Storage

    config = make_config(tiny_models, tmp_path / "c.jsonl", tmp_path / "run", queries_from=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="has no manifest.json"):
        check_queries_source(Storage(), config, 3)
