"""Experiments over the pieces: training sweeps (settings x seeds, paired tests) and index tuning (FAISS
factory x nprobe in the task metric, with its report)."""

from xdr.exports import lazy_exports

_WHERE = {
    "tune_index": "index_tuner",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
