import numpy as np
import pytest

from xdr.pipeline.fusion import fuse

P = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=np.float32)
Q = np.array([[2.0, 2.0], [4.0, 0.0], [0.0, 6.0], [1.0, 1.0]], dtype=np.float32)
OWNER = np.array([0, 0, 1, 0])  # passage 0 has 3 queries, passage 1 has 1, passage 2 none


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.3, 1.0])
def test_sum_mode_matches_hand_computation_with_nominal_count(alpha):
    fused, counts = fuse(P, Q, OWNER, alpha=alpha, mode="sum", nominal_queries=3)
    # passage 0: complete (3 of 3) -> the paper's formula: (1-a)E(p) + a * sum
    p0 = (1 - alpha) * np.array([1, 0]) + alpha * np.array([2 + 4 + 1, 2 + 0 + 1])
    # passage 1: 1 of 3 queries -> its sum is scaled to the nominal count (x3)
    p1 = (1 - alpha) * np.array([0, 2]) + alpha * 3 * np.array([0, 6])
    np.testing.assert_allclose(fused, np.stack([p0, p1, [3, 3]]), rtol=1e-6)
    assert counts.tolist() == [3, 1, 0]


def test_sum_mode_is_the_paper_formula_for_complete_passages():
    """alpha = 0.01 with 35 queries equals 0.99 E(p) + 0.35 mean E(q) (docs/METHOD.md)."""
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(2, 8)).astype(np.float32), rng.normal(size=(70, 8)).astype(np.float32)
    owner = np.repeat([0, 1], 35)
    fused, _ = fuse(p, q, owner, alpha=0.01, mode="sum", nominal_queries=35)
    expected = 0.99 * p + 0.35 * np.stack([q[:35].mean(0), q[35:].mean(0)])
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-6)


def test_effective_weight_is_equal_across_passages_with_different_counts():
    """Two passages with identical vectors but 2 vs 5 identical queries fuse to the same vector."""
    p = np.ones((2, 4), dtype=np.float32)
    q = np.full((7, 4), 2.0, dtype=np.float32)
    owner = np.array([0, 0, 1, 1, 1, 1, 1])
    fused, counts = fuse(p, q, owner, alpha=0.1, mode="sum", nominal_queries=5)
    np.testing.assert_allclose(fused[0], fused[1])
    np.testing.assert_allclose(fused[0], 0.9 * 1 + 0.1 * 5 * 2)
    assert counts.tolist() == [2, 5]


@pytest.mark.parametrize("alpha", [0.2, 0.5])
def test_mean_mode_matches_hand_computation(alpha):
    fused, _ = fuse(P, Q, OWNER, alpha=alpha, mode="mean")
    p0 = (1 - alpha) * np.array([1, 0]) + alpha * np.array([7 / 3, 3 / 3])
    p1 = (1 - alpha) * np.array([0, 2]) + alpha * np.array([0, 6])
    np.testing.assert_allclose(fused, np.stack([p0, p1, [3, 3]]), rtol=1e-6)


def test_passages_without_queries_keep_their_vector():
    fused, counts = fuse(P, Q[:0], np.array([], dtype=np.int64), alpha=0.5, mode="sum", nominal_queries=4)
    np.testing.assert_array_equal(fused, P)
    assert counts.tolist() == [0, 0, 0]


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown fusion mode 'max'; expected one of sum, mean"):
        fuse(P, Q, OWNER, alpha=0.1, mode="max")
    with pytest.raises(ValueError, match="nominal_queries"):
        fuse(P, Q, OWNER, alpha=0.1, mode="sum")
    with pytest.raises(ValueError, match="does not match"):
        fuse(P, Q, OWNER[:2], alpha=0.1, mode="mean")


def test_sum_is_the_default_mode_and_the_outputs_have_their_documented_types():
    fused, counts = fuse(P, Q, OWNER, alpha=0.3, nominal_queries=3)
    np.testing.assert_array_equal(fused, fuse(P, Q, OWNER, alpha=0.3, mode="sum", nominal_queries=3)[0])
    assert fused.dtype == np.float32 and counts.dtype == np.int64
    with pytest.raises(ValueError, match="nominal_queries"):
        fuse(P, Q, OWNER, alpha=0.3)
