"""An index refresh (build-index with quantizer_from): the earlier index's trained quantizer, only add and
merge. It must answer as one index made by adding every new vector to that quantizer (faiss alone, no xdr),
and say when the new vectors drifted too far from it."""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest

from tests.support.indexes import build_manifest
from xdr.index.search import ShardedSearcher
from xdr.ingest.synthetic import clustered_vectors, write_run
from xdr.io.storage import Storage

FACTORY = "IVF32,PQ8np"


def _next_version(vectors: np.ndarray, seed: int = 3) -> np.ndarray:
    """3 % replaced by other points of the same clusters, 1 % removed, 2 % added."""
    rng = np.random.default_rng(seed)
    n, dim = vectors.shape
    fresh = clustered_vectors(n // 20, dim, clusters=64, seed=seed + 100)
    out = vectors.copy()
    edited = rng.choice(n, size=3 * n // 100, replace=False)
    out[edited] = fresh[: len(edited)]
    keep = np.ones(n, dtype=bool)
    keep[rng.choice(n, size=n // 100, replace=False)] = False
    return np.concatenate([out[keep], fresh[len(edited): len(edited) + 2 * n // 100]])


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("refresh")
    vectors = clustered_vectors(12_000, 32, clusters=64, seed=1)
    write_run(Storage(), str(root / "run-v1"), vectors, part_size=2_500)
    build_manifest(str(root / "run-v1"), str(root / "index-v1"), FACTORY, 2)
    return root, vectors


def test_a_refresh_answers_as_the_old_quantizer_with_every_new_vector_added(first):
    root, vectors = first
    v2 = _next_version(vectors)
    write_run(Storage(), str(root / "run-v2"), v2, part_size=2_000)
    manifest = build_manifest(str(root / "run-v2"), str(root / "index-v2"), None, 3,
                              quantizer_from=str(root / "index-v1"))
    assert manifest["factory"] == FACTORY and manifest["vectors"] == len(v2)
    assert manifest["refresh"]["quantizer_from"] == str(root / "index-v1")
    trained = [(root / name / "trained.faissindex").read_bytes() for name in ("index-v1", "index-v2")]
    assert trained[0] == trained[1]

    oracle = faiss.read_index(str(root / "index-v1" / "trained.faissindex"))  # faiss alone: one index, every vector
    oracle.add_with_ids(v2, np.arange(len(v2), dtype=np.int64))
    faiss.extract_index_ivf(oracle).nprobe = 8
    queries = clustered_vectors(100, 32, clusters=64, seed=9)
    want_scores, want_ids = oracle.search(queries, 10)
    got_scores, got_ids = ShardedSearcher(str(root / "index-v2")).search_ids(queries, k=10, nprobe=8)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_ids, want_ids)])
    assert agree >= 0.99, agree  # equal but where two vectors tie in score


def test_the_refresh_measures_drift_and_advises_a_rebuild_past_max_drift(first, tmp_path, caplog):
    root, vectors = first
    write_run(Storage(), str(tmp_path / "same"), _next_version(vectors, seed=4), part_size=3_000)
    close = build_manifest(str(tmp_path / "same"), str(tmp_path / "same-index"), None, 1,
                           quantizer_from=str(root / "index-v1"))["refresh"]
    assert 0.9 < close["residual_ratio"] < 1.05 and not close["rebuild_advised"]

    elsewhere = clustered_vectors(12_000, 32, clusters=64, seed=2, centres_seed=7)  # other topics entirely
    write_run(Storage(), str(tmp_path / "moved"), elsewhere, part_size=3_000)
    with caplog.at_level(logging.WARNING, logger="xdr.index.builder"):
        far = build_manifest(str(tmp_path / "moved"), str(tmp_path / "moved-index"), None, 1,
                             quantizer_from=str(root / "index-v1"))["refresh"]
    assert far["residual_ratio"] > 1.10 and far["rebuild_advised"]
    assert "rebuild this index in full" in caplog.text

    # the ratio, worked out here with numpy: each vector's list is its highest-inner-product centroid; the
    # samples are whole runs (12,000 vectors each, under the 20,000 asked for, whatever the seed)
    index = faiss.read_index(str(root / "index-v1" / "trained.faissindex"))
    ivf = faiss.extract_index_ivf(index)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)

    def mean_residual(x):
        return ((x - centroids[(x @ centroids.T).argmax(axis=1)]) ** 2).sum(axis=1).mean()

    original = json.loads((root / "index-v1" / "manifest.json").read_text())["quantizer_fit"]["mean_residual"]
    assert original == pytest.approx(mean_residual(vectors), rel=1e-4)
    assert far["residual_ratio"] == pytest.approx(mean_residual(elsewhere) / mean_residual(vectors), rel=1e-3)


def test_a_refresh_refuses_another_factory_or_dimension(first, tmp_path):
    root, _ = first
    write_run(Storage(), str(tmp_path / "run"), clustered_vectors(2_000, 16, clusters=8), part_size=1_000)
    with pytest.raises(ValueError, match="16 dimensions, quantizer_from's index 32"):
        build_manifest(str(tmp_path / "run"), str(tmp_path / "a"), None, 1, quantizer_from=str(root / "index-v1"))
    with pytest.raises(ValueError, match="differs from quantizer_from's 'IVF32,PQ8np'"):
        build_manifest(str(root / "run-v1"), str(tmp_path / "b"), "IVF16,Flat", 1,
                       quantizer_from=str(root / "index-v1"))
    with pytest.raises(ValueError, match="is not a finished index"):
        build_manifest(str(root / "run-v1"), str(tmp_path / "c"), None, 1, quantizer_from=str(tmp_path / "none"))
