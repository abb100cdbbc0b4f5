"""The sharded IVF index against a single index and against exact search (FAISS, no Ray)."""

import json

import numpy as np
import pytest

from xdr import index as xindex
from xdr.search import ExactSearcher, ShardedSearcher, merge_topk
from xdr.storage import Storage
from xdr.synthetic import clustered_vectors, write_run


def _build(storage, run, root, factory, rows_per_part, shards, nprobe=8):
    """The build job's steps, in process."""
    offsets = xindex.part_offsets(rows_per_part)
    sample = xindex.read_sample(storage, run, rows_per_part, 20_000, seed=0)
    storage.write_bytes(xindex.IndexLayout(root).trained, xindex.to_bytes(xindex.train_index(factory, sample)))
    for part in range(len(rows_per_part)):
        xindex.add_part(storage, run, root, part, offsets[part])
    results = [xindex.merge_shard(storage, run, root, s, parts, offsets, with_text=True)
               for s, parts in enumerate(xindex.shard_plan(len(rows_per_part), shards))]
    storage.write_bytes(xindex.IndexLayout(root).manifest, json.dumps({"nprobe": nprobe, "shards": results}).encode())
    return results


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    vectors = clustered_vectors(12_000, 32, clusters=64, seed=1)
    ids = write_run(Storage(), str(root / "run"), vectors, part_size=2_500)
    return root, vectors, ids, [2500, 2500, 2500, 2500, 2000]


def test_default_factory_follows_corpus_size():
    assert xindex.default_factory(18_000_000, 768) == "IVF16384,PQ64np"
    assert xindex.default_factory(1_000_000, 768) == "IVF4096,PQ64np"
    assert xindex.default_factory(100_000, 512) == "IVF1024,PQ32np"
    assert xindex.default_factory(5_000, 64) == "IVF128,Flat"      # too few points for 8-bit PQ
    assert xindex.default_factory(36, 64) == "IVF1,Flat"


def test_sample_is_uniform_without_replacement_and_seeded():
    rows = [1000, 10, 3000]
    picks = xindex.sample_rows(rows, 400, seed=3)
    assert [len(p) for p in picks] and sum(len(p) for p in picks) == 400
    assert all(len(set(p.tolist())) == len(p) and (p < n).all() for p, n in zip(picks, rows))
    assert all((a == b).all() for a, b in zip(picks, xindex.sample_rows(rows, 400, seed=3)))
    assert abs(len(picks[2]) / 400 - 3000 / 4010) < 0.1


def test_shard_plan_covers_every_part_once():
    assert xindex.shard_plan(5, 2) == [[0, 1], [2, 3, 4]]
    assert xindex.shard_plan(2, 4) == [[0], [1]]
    plan = xindex.shard_plan(17, 5)
    assert sorted(p for s in plan for p in s) == list(range(17)) and all(plan)


def test_merge_topk_breaks_ties_by_id_and_skips_missing():
    scores, ids = merge_topk([np.array([[3.0, 1.0]]), np.array([[3.0, 2.0]])],
                             [np.array([[7, 4]]), np.array([[2, -1]])], k=3)
    assert ids.tolist() == [[2, 7, 4]] and scores.tolist() == [[3.0, 3.0, 1.0]]


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,PQ8np"])
def test_sharded_search_equals_single_index_search(synthetic_run, factory):
    root, vectors, ids, rows = synthetic_run
    storage = Storage()
    name = factory.replace(",", "_")
    single = _build(storage, str(root / "run"), str(root / f"one-{name}"), factory, rows, shards=1)
    sharded = _build(storage, str(root / "run"), str(root / f"three-{name}"), factory, rows, shards=3)
    # every id in exactly one serving shard
    assert [s["vectors"] for s in single] == [12_000] and sum(s["vectors"] for s in sharded) == 12_000
    assert [s["parts"] for s in sharded] == [[0, 1], [2], [3, 4]]
    queries = clustered_vectors(50, 32, clusters=64, seed=9)
    a = ShardedSearcher(str(root / f"one-{name}")).search(queries, k=10, nprobe=4)
    b = ShardedSearcher(str(root / f"three-{name}")).search(queries, k=10, nprobe=4)
    assert a.ids == b.ids
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)


def test_recall_at_10_against_exact_search(synthetic_run):
    """Stated thresholds on this clustered set (12k x 32-d, 64 clusters, IVF64): IVF,Flat with
    nprobe 16 of 64 lists >= 0.95; IVF,PQ8 (4 dims per byte) >= 0.5, limited by PQ, not by nprobe."""
    root, vectors, ids, rows = synthetic_run
    storage = Storage()
    queries = clustered_vectors(200, 32, clusters=64, seed=11)
    exact = ExactSearcher(str(root / "run")).search(queries, k=10)
    exact_brute = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]  # a second, independent exact answer
    assert exact.ids == [[ids[i] for i in row] for row in exact_brute.tolist()]
    for factory, threshold in (("IVF64,Flat", 0.95), ("IVF64,PQ8np", 0.5)):
        name = factory.replace(",", "_")
        if not (root / f"three-{name}").exists():
            _build(storage, str(root / "run"), str(root / f"three-{name}"), factory, rows, shards=3)
        got = ShardedSearcher(str(root / f"three-{name}")).search(queries, k=10, nprobe=16)
        recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got.ids, exact.ids)])
        assert recall >= threshold, (factory, recall)


def test_searcher_returns_text_and_handles_k_beyond_the_corpus(tmp_path):
    storage = Storage()
    vectors = clustered_vectors(30, 8, clusters=3)
    write_run(storage, str(tmp_path / "run"), vectors, part_size=7)
    _build(storage, str(tmp_path / "run"), str(tmp_path / "idx"), "IVF1,Flat", [7, 7, 7, 7, 2], shards=2)
    searcher = ShardedSearcher(str(tmp_path / "idx"))
    hits = searcher.search(vectors[:2], k=40)
    best = np.argmax(vectors[:2] @ vectors.T, axis=1)  # inner product: the best match is not always itself
    assert [row[0] for row in hits.ids] == [f"v{i:08d}" for i in best]
    assert sum(i is not None for i in hits.ids[0]) == 30 and hits.ids[0][-1] is None
    shard = searcher.shards[1]
    assert shard.lookup(np.array([shard.first_id]), ("id", "text")) == [
        {"id": f"v{shard.first_id:08d}", "text": f"text of v{shard.first_id:08d}"}]


def test_rerun_skips_committed_files_and_rebuilds_missing_ones(tmp_path):
    storage = Storage()
    vectors = clustered_vectors(40, 8, clusters=2)
    write_run(storage, str(tmp_path / "run"), vectors, part_size=10)
    first = _build(storage, str(tmp_path / "run"), str(tmp_path / "idx"), "IVF2,Flat", [10] * 4, shards=2)
    shard0 = tmp_path / "idx" / "shard-000.faissindex"
    mtime = shard0.stat().st_mtime_ns
    (tmp_path / "idx" / "shard-001.faissindex").unlink()  # as if the job died before this commit
    again = [xindex.merge_shard(storage, str(tmp_path / "run"), str(tmp_path / "idx"), s, parts,
                                xindex.part_offsets([10] * 4), with_text=True)
             for s, parts in enumerate(xindex.shard_plan(4, 2))]
    assert shard0.stat().st_mtime_ns == mtime
    assert [s["vectors"] for s in again] == [s["vectors"] for s in first] == [20, 20]
    assert again[0]["files"] == first[0]["files"]


def test_build_refuses_a_folder_built_with_other_settings(tmp_path):
    from ray_jobs.build_index import _check_settings
    from xdr.config import IndexBuildConfig

    storage = Storage()
    _check_settings(storage, IndexBuildConfig(run=str(tmp_path / "run"), factory="IVF4,Flat"))
    _check_settings(storage, IndexBuildConfig(run=str(tmp_path / "run"), factory="IVF4,Flat", nprobe=9))  # serving
    with pytest.raises(ValueError, match=r"other settings \(factory: 'IVF4,Flat' -> 'IVF8,Flat'\)"):
        _check_settings(storage, IndexBuildConfig(run=str(tmp_path / "run"), factory="IVF8,Flat"))


def test_nlist_of_reads_the_factory_string():
    assert xindex.nlist_of("IVF256,PQ8np", 32) == 256 and xindex.nlist_of("IVF1,Flat", 8) == 1
