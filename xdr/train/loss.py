"""Contrastive losses of the two recipes, with negatives shared across data-parallel workers.

- **xdr** (Tevatron, the xQG paper's retriever): dot product, temperature 1; every query against every
  passage of the global batch (positives of the other queries and all hard negatives), target its own
  positive. Passages come in groups of `1 + negatives` (train_group_size).
- **hybrid** (arXiv 2408.10536, Eq. 1): cosine / tau; the denominator holds the query's own positive and
  the hard negatives of every triplet in the global batch (not the other positives).

A passage identical to a query's own positive (the same paragraph drawn for two questions of one batch)
is masked out of that query's candidates, so it never counts as a negative.

Both are a cross-entropy over a score matrix; torch supplies it, and
`torch.distributed.nn.functional.all_gather` (differentiable) shares the vectors across workers, so no
loss library is needed. sentence-transformers' MultipleNegativesRankingLoss computes the `xdr` variant
but not Eq. 1's denominator, and it would need its own trainer around a custom module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RECIPES = ("xdr", "hybrid")


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all data-parallel workers (rank order), keeping gradients for the local
    part. Identity outside torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def contrastive_loss(query_emb: torch.Tensor, passage_emb: torch.Tensor, passage_keys: torch.Tensor, *,
                     recipe: str = "xdr", temperature: float = 1.0) -> torch.Tensor:
    """query_emb [Q, d]; passage_emb [Q*G, d] in groups of G (positive first, then its negatives);
    passage_keys int64 [Q*G] identifying passage texts (equal keys = the same passage). All local to this
    worker; they are gathered across workers here. Returns the mean loss over the global batch."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
    queries, passages, keys = gather(query_emb), gather(passage_emb), gather(passage_keys)
    n_queries = queries.shape[0]
    group = passages.shape[0] // n_queries
    if recipe == "hybrid":
        queries, passages = F.normalize(queries, dim=-1), F.normalize(passages, dim=-1)
    scores = queries @ passages.T / temperature  # [Q, Q*G]
    target = torch.arange(n_queries, device=scores.device) * group
    # the same text as my positive, elsewhere in the batch, is no negative of mine
    duplicate = keys[None, :] == keys[target][:, None]
    duplicate[torch.arange(n_queries), target] = False
    if recipe == "hybrid":  # Eq. 1: own positive + every hard negative, not the other positives
        is_positive = torch.zeros_like(duplicate)
        is_positive[:, target] = True
        is_positive[torch.arange(n_queries), target] = False
        duplicate |= is_positive
    scores = scores.masked_fill(duplicate, float("-inf"))
    return F.cross_entropy(scores, target)
