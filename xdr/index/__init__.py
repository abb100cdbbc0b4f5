"""The sharded FAISS index: training, adding parts, merging shards (build), and searching the shards with
their passage lookups (search)."""

from xdr.exports import lazy_exports

_WHERE = {
    "ShardedSearcher": "search",
    "ExactSearcher": "search",
    "build_index": "builder",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
