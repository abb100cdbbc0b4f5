"""The run manifest: what a run was asked to do, what it did, and every file it committed.

Written at the start (status "running") and at the end (status "complete"). A rerun into the same
folder must ask for the same outputs, or it is refused before any work: resuming with different
settings would mix two runs' files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import xdr
from xdr.config import IndexingJobConfig
from xdr.io import schemas
from xdr.io.layout import RunLayout
from xdr.io.storage import Storage

# Settings that change no output file: how fast it runs and where it reads from.
_NOT_OUTPUT_AFFECTING: dict[str, Any] = {"resources": True, "storage": True, "generator": {"batch_size"},
                                         "encoder": {"batch_size"}, "corpus": {"split_bytes"}}


def output_settings(config: IndexingJobConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude=_NOT_OUTPUT_AFFECTING)


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_settings(previous: dict[str, Any], settings: dict[str, Any], folder: str, holds: str) -> None:
    """Refuse to resume `folder` with settings other than those it was started with: its committed files
    would be silently reused. `holds` says what the folder holds ("a run", "an index")."""
    old, new = _flatten(previous), _flatten(settings)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"{folder} holds {holds} with other settings ({details}). Resume it with the same "
                         "settings, or choose another output folder (or delete this one).")


def pin_settings(storage: Storage, uri: str, settings: dict[str, Any], folder: str, holds: str) -> None:
    """Write `settings` to `uri` at an output's first run; on a rerun, check_same_settings against them."""
    if storage.exists(uri):
        check_same_settings(json.loads(storage.read_bytes(uri)), settings, folder, holds)
    else:
        storage.write_bytes(uri, json.dumps(settings, indent=2).encode())


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{xdr.__version__}+{commit}" if commit else xdr.__version__


def describe_model(name: str, revision: str | None) -> dict[str, Any]:
    """Name and revision; for a local folder also a hash of its files, since it has no Hub commit."""
    info: dict[str, Any] = {"name": name, "revision": revision}
    folder = Path(name)
    if folder.is_dir():
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        info["local_sha256"] = digest.hexdigest()
    return info


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def begin_run(storage: Storage, config: IndexingJobConfig) -> dict[str, Any]:
    """Check a rerun asks for the same outputs, then write the 'running' manifest."""
    layout = RunLayout(config.output)
    settings = output_settings(config)
    previous = None
    if storage.exists(layout.manifest):
        previous = json.loads(storage.read_bytes(layout.manifest))
        check_same_settings(previous.get("settings", {}), settings, config.output, "a run")
    manifest = {
        "schema_version": schemas.SCHEMA_VERSION,
        "status": "running",
        "code_version": code_version(),
        "python": platform.python_version(),
        "settings": settings,
        "config": config.model_dump(mode="json"),
        "models": {"generator": describe_model(config.generator.model, config.generator.revision),
                   "encoder": describe_model(config.encoder.model, config.encoder.revision)},
        "started_at": now(),
        "attempts": (previous or {}).get("attempts", 0) + 1,
    }
    storage.write_bytes(layout.manifest, json.dumps(manifest, indent=2).encode())
    return manifest


def finish_run(storage: Storage, config: IndexingJobConfig, manifest: dict[str, Any], **results: Any) -> dict:
    manifest = {**manifest, **results, "status": "complete", "finished_at": now()}
    storage.write_bytes(RunLayout(config.output).manifest, json.dumps(manifest, indent=2, default=str).encode())
    return manifest


def read_manifest(storage: Storage, run_uri: str) -> dict[str, Any]:
    uri = RunLayout(run_uri).manifest
    if not storage.exists(uri):
        raise ValueError(f"{run_uri} has no manifest.json: it is not an xdr run folder")
    return json.loads(storage.read_bytes(uri))
