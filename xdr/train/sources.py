"""A training run's data and records, shared by the encoder and generator trainers (ray_jobs.training runs
them on Ray Train): each `train` / `validation` source loaded, the run's name, its manifest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from xdr.config import RUN_NEUTRAL, TrainDataConfig, TrainGeneratorConfig
from xdr.io.manifest import code_version
from xdr.io.storage import Storage
from xdr.uris import join


def load_source(storage: Storage, source) -> tuple[Any, list]:
    """One `train` / `validation` item -> (a ParallelSet, triplets or generator examples; rejected rows)."""
    from xdr.train.data import load_parallel_jsonl, load_triplets, load_xquad
    from xdr.train.qg import load_qg_jsonl

    if source.kind == "xquad":
        articles = range(source.articles[0], source.articles[1] + 1) if source.articles else None
        return load_xquad(storage, source.path, languages=tuple(source.languages or ()) or None, articles=articles)
    files = storage.expand(source.path)
    if not files:
        raise ValueError(f"{source.path!r} names no files")
    loader = {"parallel_jsonl": load_parallel_jsonl, "triplets": load_triplets, "qg_jsonl": load_qg_jsonl}
    return loader[source.kind](storage, files)


def run_name(config, prefix: str = "train") -> str:
    """A training run's name, derived from the settings that change what it learns: a rerun of the same
    config finds its own checkpoints under this name; `RUN_NEUTRAL` fields (resources, storage) do not count."""
    digest = hashlib.sha256(config.model_dump_json(exclude=set(RUN_NEUTRAL)).encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"


def load_sets(storage: Storage, sources: list[TrainDataConfig]) -> tuple[list, list]:
    """Every source's data set (for the encoder trainer's sampler), and the rejected rows of all."""
    sets, rejects = [], []
    for source in sources:
        data, bad = load_source(storage, source)
        sets.append(data)
        rejects += bad
    return sets, rejects


def load_examples(storage: Storage, sources: list[TrainDataConfig], config: TrainGeneratorConfig) -> tuple[list, list]:
    """Every source's (passage, language, question) examples, concatenated, and the rejected rows."""
    from xdr.train.qg import qg_examples, qg_from_triplets

    examples, rejects = [], []
    for source in sources:
        data, bad = load_source(storage, source)
        rejects += bad
        if source.kind in ("xquad", "parallel_jsonl"):
            examples += qg_examples(data, config.passage_language, config.languages)
        elif source.kind == "triplets":
            data, unprompted = qg_from_triplets(data, source.path)
            examples += data
            rejects += unprompted
        else:
            examples += data
    return examples, rejects


def write_training_manifest(storage: Storage, config, name: str, progress: dict, info: dict, rejects: list,
                            extra_files: list[str], seconds: float, last_metrics: dict) -> dict:
    """<output>/manifest.json of a finished training run: its config, steps and losses, best model, the
    data files it read (with checksums), rejected rows."""
    data_files = []
    for source in config.train + config.validation:
        # what the loaders read: an XQuAD folder's JSON files (not its README or licence), else the pattern's files
        files = (storage.list_files(source.path, suffix=".json") if source.kind == "xquad"
                 else storage.expand(source.path))
        data_files += [vars(storage.record(f)) for f in files]
    for pattern in extra_files:
        data_files += [vars(storage.record(f)) for f in storage.expand(pattern)]
    manifest = {
        "status": "complete", "run_name": name, "config": config.model_dump(mode="json"),
        "code_version": code_version(), "model_folder": join(config.output, "model"),
        "steps": progress["step"], "best_step": info["step"], "best_val_loss": info["val_loss"],
        "parameters": info.get("parameters"), "trainable_parameters": info.get("trainable_parameters"),
        "val_losses": progress["val_losses"], "resumed_at": progress["resumed_at"], "rejects": len(rejects),
        "reject_examples": [vars(r) for r in rejects[:20]], "data_files": data_files, "seconds": round(seconds, 1),
        "examples_per_s": last_metrics.get("examples_per_s"),  # of the last attempt, start-up excluded
    }
    storage.write_bytes(join(config.output, "manifest.json"), json.dumps(manifest, indent=2).encode())
    return manifest


