"""Reading a corpus and validating it: formats (JSONL, CSV/TSV, Parquet), row rules, duplicates across
files, fixed-size parts; synthetic validated corpora for benchmarks."""

from xdr.exports import lazy_exports

_WHERE = {
    "validate_corpus": "validation",
    "PassageValidator": "corpus",
    "clustered_vectors": "synthetic",
    "write_run": "synthetic",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
