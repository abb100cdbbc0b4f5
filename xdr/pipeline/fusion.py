"""xQG fusion: e'(p) = (1 - alpha) E(p) + alpha * sum_{q in Q(p)} E(q)  (docs/METHOD.md section 1, step 5).

In `sum` mode the augmentation grows with a passage's number of queries, so a passage that lost
some generations (empty output, fewer queries used) would be weighted less than its neighbours under
inner product. We keep the effective weight equal by scaling its sum to the nominal count:
    e'(p) = (1 - alpha) E(p) + alpha * (n_nominal / n_p) * sum E(q)
which is exactly the paper's formula when n_p = n_nominal. `mean` mode uses alpha * mean E(q).
Passages with no query keep E(p) unchanged and are counted by the caller.
"""

from __future__ import annotations

import numpy as np

FUSION_MODES = ("sum", "mean")


def fuse(
    passage_emb: np.ndarray,
    query_emb: np.ndarray,
    query_owner: np.ndarray,
    *,
    alpha: float,
    mode: str = "sum",
    nominal_queries: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse passage vectors with their generated-query vectors.

    passage_emb: float [P, d]; query_emb: float [Q, d]; query_owner: int [Q], the row of
    passage_emb each query belongs to. nominal_queries: the count a complete passage has (sum mode).
    Returns (fused float32 [P, d], n_queries int64 [P]).
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; expected one of {', '.join(FUSION_MODES)}")
    if mode == "sum" and not nominal_queries:
        raise ValueError("sum fusion needs nominal_queries, the number of queries of a complete passage")
    n_passages, dim = passage_emb.shape
    if query_emb.shape[0] != len(query_owner) or (len(query_emb) and query_emb.shape[1] != dim):
        raise ValueError(f"query_emb {query_emb.shape} does not match query_owner ({len(query_owner)}) "
                         f"and dimension {dim}")
    query_sum = np.zeros((n_passages, dim), dtype=np.float64)
    np.add.at(query_sum, np.asarray(query_owner, dtype=np.int64), query_emb.astype(np.float64))
    n_queries = np.bincount(query_owner, minlength=n_passages).astype(np.int64)

    has_queries = n_queries > 0
    scale = np.zeros(n_passages, dtype=np.float64)
    if mode == "sum":
        assert nominal_queries is not None  # checked above for mode "sum"
        scale[has_queries] = nominal_queries / n_queries[has_queries]
    else:
        scale[has_queries] = 1.0 / n_queries[has_queries]
    fused = passage_emb.astype(np.float64).copy()
    fused[has_queries] = ((1 - alpha) * fused[has_queries]
                          + alpha * scale[has_queries, None] * query_sum[has_queries])
    return fused.astype(np.float32), n_queries
