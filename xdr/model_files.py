"""Model folders on object storage.

`encoder.model`, `generator.model` and the trainer's `model` may name an s3:// folder, such as the
`<output>/model` the training job writes. transformers and the USE loader read local folders, so the
folder is copied once per machine into a cache and loaded from there. The cache entry is named by the
URI and the folder's listing (names, sizes, modification times): a model rewritten in place is fetched
again, an unchanged one never. Copies are made under a temporary name and renamed, so actors that start
together on one machine never load a half-copied folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from xdr.storage import Storage, is_s3


def model_cache_dir() -> Path:
    return Path(os.environ.get("XDR_MODEL_CACHE") or Path.home() / ".cache" / "xdr" / "models")


def _listing(storage: Storage, uri: str) -> list[tuple[str, int, int]]:
    """(path inside the folder, bytes, mtime ns) of every file under the folder."""
    fs, root = storage.filesystem(uri)
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise ValueError(f"model {uri} is a file; give the folder that holds it")
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted((e.path[len(root):].lstrip("/"), e.size or 0, e.mtime_ns or 0)
                  for e in entries if e.type == pafs.FileType.File)


def local_model(name: str, storage: Storage | None = None, cache_dir: Path | None = None) -> str:
    """A name transformers can load: Hub ids and local folders unchanged, an s3:// folder copied into the
    cache (once) and its local path returned."""
    if not is_s3(name):
        return name
    storage = storage or Storage()
    files = _listing(storage, name)
    if not files:
        raise FileNotFoundError(f"model folder {name} does not exist or is empty")
    key = hashlib.sha256(repr((name.rstrip("/"), files)).encode()).hexdigest()[:24]
    target = (cache_dir or model_cache_dir()) / key
    if target.is_dir():
        return str(target)
    staging = target.with_name(f".{key}-{uuid.uuid4().hex[:8]}")
    try:
        fs, root = storage.filesystem(name)
        for rel, _, _ in files:
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(f"{root}/{rel}") as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, length=8 << 20)
        try:
            staging.rename(target)
        except OSError:  # another process finished the same copy first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
