"""Object storage behind URIs: local paths, file:// and s3://.

Reads and listings go through pyarrow filesystems. Writes of finished files are atomic: a local file
is written under a hidden temporary name and renamed; an S3 object is sent with one PUT (boto3), which
S3 makes visible whole or not at all. So a file that exists is a committed file, and resume can trust it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from xdr.config import StorageConfig
from xdr.uris import is_s3

_GLOB_CHARS = "*?["
_MAX_PUT_BYTES = 5 * 1024**3  # S3's limit for a single PUT


@dataclass(frozen=True)
class FileRecord:
    """A committed file: where it is, its size and its SHA-256."""

    uri: str
    bytes: int
    sha256: str


def _glob_regex(pattern: str) -> re.Pattern:
    """Shell-style glob: `*` and `?` stay within one path segment, `**/` spans any number of folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape("["))
                i += 1
            else:
                out.append(fnmatch.translate(pattern[i: end + 1])[4:-3])  # the class, as fnmatch writes it
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


class _HashingFile:
    """A binary file that counts and hashes what is written to it."""

    def __init__(self, raw, uri: str):
        self._raw, self._uri, self._hash, self._bytes = raw, uri, hashlib.sha256(), 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._bytes += view.nbytes
        return self._raw.write(view)

    def tell(self) -> int:
        return self._bytes

    def flush(self) -> None:
        self._raw.flush()

    @property
    def record(self) -> FileRecord:
        return FileRecord(self._uri, self._bytes, self._hash.hexdigest())


class Storage:
    """Filesystem access for one storage configuration. Picklable: clients are made lazily."""

    def __init__(self, config: StorageConfig | None = None):
        self.config = config or StorageConfig()

    def resolved(self) -> StorageConfig:
        """The config with endpoint and region taken from this process's environment, so that workers
        on other machines talk to the same endpoint. Credentials are not copied: each node uses its own
        standard AWS settings, and secrets never travel in a config."""
        return self.config.model_copy(update={"s3_endpoint": self._endpoint, "s3_region": self._region})

    def __getstate__(self):
        return {"config": self.config}

    def __setstate__(self, state):
        self.config = state["config"]

    # --- S3 settings from the config or the standard AWS environment ---------------------------
    @property
    def _endpoint(self) -> str | None:
        return (self.config.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))

    @property
    def _region(self) -> str:
        return (self.config.s3_region or os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")

    @cached_property
    def _s3_fs(self) -> pafs.S3FileSystem:
        kwargs = {"region": self._region}
        endpoint = self._endpoint
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
        return pafs.S3FileSystem(**kwargs)

    @cached_property
    def _s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self._endpoint, region_name=self._region)

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem for a URI and the path inside it."""
        if is_s3(uri):
            return self._s3_fs, uri[len("s3://"):].rstrip("/")
        if uri.startswith("file://"):
            uri = uri[len("file://"):]
        return pafs.LocalFileSystem(), os.path.abspath(uri)

    def _uri(self, original: str, path: str) -> str:
        return f"s3://{path}" if is_s3(original) else path

    # --- reading ----------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        fs, path = self.filesystem(uri)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def open_input(self, uri: str):
        fs, path = self.filesystem(uri)
        return fs.open_input_stream(path)

    def read_bytes(self, uri: str) -> bytes:
        with self.open_input(uri) as f:
            return f.read()

    def read_table(self, uri: str, columns: list[str] | None = None) -> pa.Table:
        fs, path = self.filesystem(uri)
        return pq.read_table(path, filesystem=fs, columns=columns)

    def read_schema(self, uri: str) -> pa.Schema:
        """A Parquet file's schema, from its footer."""
        fs, path = self.filesystem(uri)
        return pq.read_schema(path, filesystem=fs)

    def parquet_rows(self, uri: str) -> int:
        """Row count of a Parquet file, from its footer."""
        fs, path = self.filesystem(uri)
        return pq.read_metadata(path, filesystem=fs).num_rows

    def file_infos(self, uris: list[str]) -> list[dict]:
        """Size and modification time of each file, in one listing call per filesystem: how a rerun tells
        that its input changed."""
        if not uris:
            return []
        fs, _ = self.filesystem(uris[0])
        infos = fs.get_file_info([self.filesystem(u)[1] for u in uris])
        return [{"uri": u, "bytes": int(i.size or 0), "mtime_ns": i.mtime_ns} for u, i in zip(uris, infos)]

    def list_files(self, uri: str, suffix: str = "") -> list[str]:
        """Files under a folder (recursive, hidden names skipped), sorted; [] if it does not exist."""
        fs, path = self.filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type == pafs.FileType.File:
            return [self._uri(uri, path)]
        try:  # S3 may still report a folder whose objects were just deleted
            entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            rel = entry.path[len(path):].lstrip("/")
            if entry.type != pafs.FileType.File or any(_is_hidden(p) for p in rel.split("/")):
                continue
            if entry.path.endswith(suffix):
                found.append(self._uri(uri, entry.path))
        return sorted(found)

    def expand(self, pattern: str) -> list[str]:
        """A file, a folder or a glob -> the sorted list of files it names."""
        if not any(c in pattern for c in _GLOB_CHARS):
            return self.list_files(pattern)
        scheme = "s3://" if is_s3(pattern) else ""
        body = pattern[len(scheme):]
        cut = min(body.find(c) for c in _GLOB_CHARS if c in body)
        base = body[: body.rfind("/", 0, cut) + 1] or "."
        candidates = self.list_files(scheme + base)
        matcher = _glob_regex(self.filesystem(pattern)[1])
        return [c for c in candidates if matcher.fullmatch(self.filesystem(c)[1])]

    # --- writing ----------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes) -> FileRecord:
        """Write a whole file atomically and return its record."""
        fs, path = self.filesystem(uri)
        if is_s3(uri):
            if len(data) > _MAX_PUT_BYTES:
                raise ValueError(f"{uri}: {len(data)} bytes exceed one S3 PUT; lower passages_per_part")
            bucket, _, key = path.partition("/")
            self._s3_client.put_object(Bucket=bucket, Key=key, Body=data)
        else:
            folder, name = os.path.split(path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return FileRecord(uri, len(data), hashlib.sha256(data).hexdigest())

    def write_table(self, uri: str, table: pa.Table) -> FileRecord:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return self.write_bytes(uri, buffer.getvalue())

    @contextmanager
    def writer(self, uri: str, *, spool_dir: str | None = None) -> Iterator[_HashingFile]:
        """A file to stream into, for outputs too large to build in memory; committed atomically when the
        block ends without an error (local: renamed into place; S3: uploaded from a local spool file,
        multipart when large). Its record is `.record` on the yielded file afterwards."""
        fs, path = self.filesystem(uri)
        if is_s3(uri):
            folder = spool_dir or tempfile.gettempdir()
        else:
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as raw:
                out = _HashingFile(raw, uri)
                yield out
                raw.flush()
                os.fsync(raw.fileno())
            if is_s3(uri):
                bucket, _, key = path.partition("/")
                self._s3_client.upload_file(tmp, bucket, key)
            else:
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def remove_tree(self, uri: str) -> None:
        """Delete a folder and everything under it (nothing if it does not exist)."""
        fs, path = self.filesystem(uri)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)

    def record(self, uri: str) -> FileRecord:
        """The record of a file already committed (size and checksum read back)."""
        data = self.read_bytes(uri)
        return FileRecord(uri, len(data), hashlib.sha256(data).hexdigest())

    def remove_stale_temporaries(self, uri: str) -> int:
        """Delete temporary files a killed local writer left behind; returns how many."""
        if is_s3(uri):
            return 0  # S3 writes leave nothing behind
        fs, path = self.filesystem(uri)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return 0
        removed = 0
        for entry in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            if entry.type == pafs.FileType.File and ".tmp-" in entry.base_name and entry.base_name.startswith("."):
                fs.delete_file(entry.path)
                removed += 1
        return removed
