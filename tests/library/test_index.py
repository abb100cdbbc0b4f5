"""The sharded IVF index against a single index and against exact search (FAISS, no Ray)."""


import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.support.indexes import build_here
from xdr.index import build as xindex
from xdr.index.search import ExactSearcher, ShardedSearcher, merge_topk
from xdr.ingest.synthetic import clustered_vectors, write_run
from xdr.io.layout import IndexLayout
from xdr.io.storage import Storage


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


def test_shard_plan_covers_every_part_once_and_never_makes_an_empty_shard():
    assert xindex.shard_plan([10] * 5, 2) == [[0, 1, 2], [3, 4]]  # a part goes where its first row falls
    assert xindex.shard_plan([10, 10], 4) == [[0], [1]]
    assert xindex.shard_plan([10_000, 10_000, 0], 2) == [[0], [1, 2]]  # a part of trailing rejects joins shard 1
    assert xindex.shard_plan([100, 10_000, 10], 3) == [[0, 1], [2]]  # a shard that would be empty is dropped
    rows = [int(r) for r in np.random.default_rng(0).integers(0, 50, size=17)]
    plan = xindex.shard_plan(rows, 5)
    assert sorted(p for s in plan for p in s) == list(range(17))
    assert all(sum(rows[p] for p in s) > 0 for s in plan) and len(plan) == 5


def test_merge_topk_breaks_ties_by_id_and_skips_missing():
    scores, ids = merge_topk([np.array([[3.0, 1.0]]), np.array([[3.0, 2.0]])],
                             [np.array([[7, 4]]), np.array([[2, -1]])], k=3)
    assert ids.tolist() == [[2, 7, 4]] and scores.tolist() == [[3.0, 3.0, 1.0]]


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,PQ8np"])
def test_sharded_search_equals_single_index_search(synthetic_run, factory):
    root, vectors, ids, rows = synthetic_run
    name = factory.replace(",", "_")
    single = build_here(str(root / "run"), str(root / f"one-{name}"), factory, shards=1)
    sharded = build_here(str(root / "run"), str(root / f"three-{name}"), factory, shards=3)
    # every id in exactly one serving shard
    assert [s["vectors"] for s in single] == [12_000] and sum(s["vectors"] for s in sharded) == 12_000
    assert [s["parts"] for s in sharded] == [[0, 1], [2, 3], [4]]  # first rows 0, 2500 | 5000, 7500 | 10000
    queries = clustered_vectors(50, 32, clusters=64, seed=9)
    a = ShardedSearcher(str(root / f"one-{name}")).search(queries, k=10, nprobe=4)
    b = ShardedSearcher(str(root / f"three-{name}")).search(queries, k=10, nprobe=4)
    assert a.ids == b.ids
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)


def test_recall_at_10_against_exact_search(synthetic_run):
    """Stated thresholds on this clustered set (12k x 32-d, 64 clusters, IVF64): IVF,Flat with
    nprobe 16 of 64 lists >= 0.95; IVF,PQ8 (4 dims per byte) >= 0.5, limited by PQ, not by nprobe."""
    root, vectors, ids, rows = synthetic_run
    queries = clustered_vectors(200, 32, clusters=64, seed=11)
    searcher = ExactSearcher(str(root / "run"))
    exact = searcher.search(queries, k=10)
    exact_brute = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]  # a second, independent exact answer
    assert exact.ids == [[ids[i] for i in row] for row in exact_brute.tolist()]
    everything = searcher.search(queries[:2], k=len(ids)).ids  # every row, the first and the last included
    assert all(sorted(row) == sorted(ids) for row in everything)
    for factory, threshold in (("IVF64,Flat", 0.95), ("IVF64,PQ8np", 0.5)):
        name = factory.replace(",", "_")
        if not (root / f"three-{name}").exists():
            build_here(str(root / "run"), str(root / f"three-{name}"), factory, shards=3)
        got = ShardedSearcher(str(root / f"three-{name}")).search(queries, k=10, nprobe=16)
        recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got.ids, exact.ids)])
        assert recall >= threshold, (factory, recall)


def test_searcher_returns_text_and_handles_k_beyond_the_corpus(tmp_path):
    storage = Storage()
    vectors = clustered_vectors(30, 8, clusters=3)
    write_run(storage, str(tmp_path / "run"), vectors, part_size=7)
    build_here(str(tmp_path / "run"), str(tmp_path / "idx"), "IVF1,Flat", shards=2)
    searcher = ShardedSearcher(str(tmp_path / "idx"))
    hits = searcher.search(vectors[:2], k=40)
    best = np.argmax(vectors[:2] @ vectors.T, axis=1)  # inner product: the best match is not always itself
    assert [row[0] for row in hits.ids] == [f"v{i:08d}" for i in best]
    assert sum(i is not None for i in hits.ids[0]) == 30 and hits.ids[0][-1] is None
    shard = searcher.shards[1]
    assert shard.lookup(np.array([shard.first_id]), ("id", "text")) == [
        {"id": f"v{shard.first_id:08d}", "text": f"text of v{shard.first_id:08d}"}]
    both = np.array([[0, shard.first_id]])  # one id in each shard, through the searcher's own lookup
    assert searcher.docs(both, ("id", "text")) == {i: {"id": f"v{i:08d}", "text": f"text of v{i:08d}"}
                                                   for i in (0, shard.first_id)}
    build_here(str(tmp_path / "run"), str(tmp_path / "bare"), "IVF1,Flat", shards=1, with_text=False)
    with pytest.raises(ValueError, match="built without text"):
        ShardedSearcher(str(tmp_path / "bare")).docs(both, ("id", "text"))


def test_nprobe_reaches_every_shard_and_probing_every_list_is_exact_search(synthetic_run):
    root, vectors, ids, rows = synthetic_run
    if not (root / "three-IVF64_Flat").exists():
        build_here(str(root / "run"), str(root / "three-IVF64_Flat"), "IVF64,Flat", shards=3)
    searcher = ShardedSearcher(str(root / "three-IVF64_Flat"))  # built with nprobe 8
    queries = clustered_vectors(50, 32, clusters=64, seed=12)
    every_list = searcher.search(queries, k=10, nprobe=64)
    assert every_list.ids == ExactSearcher(str(root / "run")).search(queries, k=10).ids
    assert searcher.search(queries, k=10, nprobe=1).ids != every_list.ids


def test_rerun_skips_committed_files_and_rebuilds_missing_ones(tmp_path):
    storage = Storage()
    vectors = clustered_vectors(40, 8, clusters=2)
    write_run(storage, str(tmp_path / "run"), vectors, part_size=10)
    first = build_here(str(tmp_path / "run"), str(tmp_path / "idx"), "IVF2,Flat", shards=2)
    shard0 = tmp_path / "idx" / "shard-000.faissindex"
    mtime = shard0.stat().st_mtime_ns
    (tmp_path / "idx" / "shard-001.faissindex").unlink()  # as if the job died before this commit
    again = [xindex.merge_shard(storage, str(tmp_path / "run"), str(tmp_path / "idx"), s, parts,
                                xindex.part_offsets([10] * 4), with_text=True)
             for s, parts in enumerate(xindex.shard_plan([10] * 4, 2))]
    assert shard0.stat().st_mtime_ns == mtime
    assert [s["vectors"] for s in again] == [s["vectors"] for s in first] == [20, 20]
    assert again[0]["files"] == first[0]["files"]


def test_build_refuses_a_folder_built_with_other_settings(tmp_path):
    from xdr.config import IndexBuildConfig
    from xdr.index.builder import build_index

    run, idx = str(tmp_path / "run"), str(tmp_path / "idx")
    write_run(Storage(), run, clustered_vectors(40, 8, clusters=2), part_size=10)
    build_index(IndexBuildConfig(run=run, output=idx, factory="IVF4,Flat"), emit=lambda _: None)
    resumed = build_index(IndexBuildConfig(run=run, output=idx, factory="IVF4,Flat", nprobe=9), emit=lambda _: None)
    assert resumed["nprobe"] == 9  # a serving setting: the same files, a new manifest
    with pytest.raises(ValueError, match=r"other settings \(factory: 'IVF4,Flat' -> 'IVF8,Flat'\)"):
        build_index(IndexBuildConfig(run=run, output=idx, factory="IVF8,Flat"), emit=lambda _: None)


def test_nlist_of_reads_the_factory_string():
    assert xindex.nlist_of("IVF256,PQ8np") == 256 and xindex.nlist_of("IVF1,Flat") == 1
    assert xindex.nlist_of("OPQ16_64,IVF1024,PQ16") == 1024 and xindex.nlist_of("Flat") == 1


def test_shards_answer_the_ids_titles_and_texts_of_exact_search(tmp_path):
    """Three shards of an exhaustive IVF1 index against brute force over the vectors, with the ids and
    texts read straight from the run's passages parts."""
    storage = Storage()
    vectors = clustered_vectors(300, 16, clusters=5, seed=4)
    ids = write_run(storage, str(tmp_path / "run"), vectors, part_size=40, text_of=lambda pid: f"«{pid}» " * 3)
    build_here(str(tmp_path / "run"), str(tmp_path / "idx"), "IVF1,Flat", shards=3)
    searcher = ShardedSearcher(str(tmp_path / "idx"))
    queries = vectors[::37] + 0.05
    hits = searcher.search(queries, k=5)
    scores = queries @ vectors.T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert hits.ids == [[ids[j] for j in row] for row in expected]
    np.testing.assert_allclose(hits.scores, np.take_along_axis(scores, expected, 1), rtol=1e-5)
    passages = {r["id"]: r for r in pq.read_table(tmp_path / "run" / "passages").to_pylist()}
    for shard in searcher.shards:
        rows = np.arange(shard.first_id, shard.first_id + shard.size)[::13]
        assert shard.lookup(rows, ("id", "title", "text")) == [
            {k: passages[ids[r]][k] for k in ("id", "title", "text")} for r in rows]


_RSS_SCRIPT = """
import sys, numpy as np, psutil
from xdr.index.search import ShardSearcher
rss = psutil.Process().memory_info
before = rss().rss
shard = ShardSearcher(sys.argv[1], 0)
loaded = rss().rss
hits = shard.lookup(np.arange(shard.first_id, shard.first_id + shard.size)[::50], ("id", "title", "text"))
assert len(hits) == 8 and all(h["text"].startswith(h["id"]) for h in hits)
print(loaded - before, rss().rss - loaded, sum(len(h["text"]) for h in hits))
"""


def test_a_replica_does_not_hold_the_text(tmp_path):
    """Two shards of 400 passages, one with 1 KiB of text a passage, one with 256 KiB (100 MB in all),
    each loaded in a fresh process and asked for 8 texts: loading costs the same whatever the text (the
    replica held it all before), and a lookup costs a small multiple of the text it returns (2 MB here),
    read from the mapped file, not the shard's 100 MB."""
    import subprocess
    import sys

    from tests.support.paths import REPO

    storage = Storage()
    vectors = clustered_vectors(400, 16, clusters=4, seed=2)
    load, lookup, returned, text_bytes = {}, {}, {}, {}
    for kib in (1, 256):
        run, idx = str(tmp_path / f"run{kib}"), tmp_path / f"idx{kib}"
        words = kib * 1024 // 10 + 1  # ids are 9 characters, with the space 10
        write_run(storage, run, vectors, part_size=100, text_of=lambda pid, words=words: (pid + " ") * words)
        build_here(run, str(idx), "IVF1,Flat", shards=1)
        text_bytes[kib] = (idx / "shard-000.lookup.arrow").stat().st_size
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(idx)], cwd=REPO, capture_output=True,
                             text=True, check=True, timeout=120)
        load[kib], lookup[kib], returned[kib] = map(int, out.stdout.split()[-3:])
    more_text = text_bytes[256] - text_bytes[1]
    assert more_text > 100e6
    assert load[256] - load[1] < 0.02 * more_text, (load, text_bytes)
    # measured 2026-12-02: 17 MB more for 2.1 MB of text (the mapped pages, Arrow's copy, Python's strings,
    # allocator pools): 8x what is returned, a sixth of the shard's text, which a replica holding it would add
    assert returned[256] > 2e6 and lookup[256] - lookup[1] < 12 * returned[256], (lookup, returned, text_bytes)


CPU_FAISS_ONLY = pytest.mark.skipif(xindex.faiss_gpus() > 0, reason="the CPU fallback of use_gpu: faiss has GPUs "
                                    "here (tests/gpu checks the GPU path)")


@CPU_FAISS_ONLY
@pytest.mark.parametrize("factory", ["IVF16,PQ8np", "IVF16,Flat"])
def test_with_use_gpu_and_no_gpu_faiss_the_index_bytes_are_todays(tmp_path, factory):
    """faiss-cpu here: use_gpu trains and adds on the CPU, byte for byte what plain faiss calls write; the list
    assignment the GPU path uses (add_assigned), given the CPU quantizer, adds the same bytes as add_with_ids."""
    import faiss

    storage, run = Storage(), str(tmp_path / "run")
    vectors = clustered_vectors(6_000, 32, clusters=16, seed=2)
    write_run(storage, run, vectors, part_size=3_000)
    sample = xindex.read_sample(storage, run, [3_000, 3_000], 4_000, seed=0)
    plain = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)  # what today's build does, by hand
    faiss.extract_index_ivf(plain).cp.seed = 7
    plain.train(sample)
    trained = xindex.train_index(factory, sample, seed=7, use_gpu=True)
    assert xindex.to_bytes(trained) == xindex.to_bytes(plain)

    for use_gpu in (False, True):
        root = tmp_path / f"gpu-{use_gpu}"
        storage.write_bytes(IndexLayout(str(root)).trained, xindex.to_bytes(trained))
        xindex.add_part(storage, run, str(root), 1, 3_000, use_gpu=use_gpu)
    partials = [(tmp_path / f"gpu-{g}" / "partials" / "part-00001.faissindex").read_bytes() for g in (False, True)]
    assert partials[0] == partials[1]
    part = vectors[3_000:]
    ids = np.arange(3_000, 6_000, dtype=np.int64)
    assigned = xindex.from_bytes(xindex.to_bytes(plain))
    xindex.add_assigned(assigned, part, ids, assigned.quantizer)
    plain.add_with_ids(part, ids)
    assert plain.ntotal == 3_000 and xindex.to_bytes(assigned) == xindex.to_bytes(plain) == partials[0]


@CPU_FAISS_ONLY
def test_the_build_job_with_use_gpu_on_a_cluster_without_gpus_says_so_once_and_builds_the_same_index(
        ray_local, tmp_path, caplog):
    from ray_jobs.build_index import build_index
    from xdr.config import IndexBuildConfig

    write_run(Storage(), str(tmp_path / "run"), clustered_vectors(4_000, 16, clusters=8, seed=4), part_size=1_000)
    builds = {}
    for use_gpu in (False, True):
        caplog.clear()
        with caplog.at_level("WARNING", logger="xdr.index.builder"):
            builds[use_gpu] = build_index(IndexBuildConfig(
                run=str(tmp_path / "run"), output=str(tmp_path / str(use_gpu)), factory="IVF8,Flat", shards=2,
                use_gpu=use_gpu))
        said = [r.getMessage() for r in caplog.records if "use_gpu" in r.getMessage()]
        assert len(said) == (1 if use_gpu else 0) and (not said or "no GPU" in said[0]), said
    for name in ("trained.faissindex", "shard-000.faissindex", "shard-001.faissindex", "shard-001.docs.parquet"):
        assert (tmp_path / "True" / name).read_bytes() == (tmp_path / "False" / name).read_bytes(), name
    assert builds[True]["faiss_gpus"] == 0 and builds[True]["vectors"] == 4_000
