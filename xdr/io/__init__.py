"""Where things are and what they hold: storage behind URIs (local, s3://), the layouts of run and index
folders, the Parquet schemas of each stage, run manifests."""

from xdr.exports import lazy_exports

_WHERE = {
    "Storage": "storage",
    "FileRecord": "storage",
    "RunLayout": "layout",
    "IndexLayout": "layout",
    "read_manifest": "manifest",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
