"""The indexing run's model stages (generate queries, encode and fuse) as part-at-a-time callables, and
the xQG fusion rule."""

from xdr.exports import lazy_exports

_WHERE = {
    "fuse": "fusion",
    "GenerateQueriesStage": "stages",
    "EmbedPartStage": "stages",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
