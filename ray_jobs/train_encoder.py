"""The encoder training job: hybrid-batch (or xDR-recipe) contrastive training on Ray Train.

    xdr train-encoder --config configs/train_hybrid_xquad.yaml
    ray job submit --working-dir . -- python -m ray_jobs.train_encoder --config ... --num_workers=8 --use_gpu=true

Each worker loads the data, draws its slice of every global batch (xdr.train.samplers), encodes,
and computes the loss over the global batch (vectors gathered across workers). Rank 0 reports a checkpoint
every `checkpoint_every` steps (weights, optimizer, schedule, sampler position); a failed worker group
restarts from it (FailureConfig), and rerunning the same command after the driver died resumes it too:
the run's name is derived from the config, so Ray Train finds its own state under <output>/checkpoints.
The best model by validation loss is written to <output>/model, which `encoder.model` takes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ray_jobs.common import run_job
from xdr.config import TrainDataConfig, TrainEncoderConfig
from xdr.model_files import local_model
from xdr.storage import Storage, is_s3, join

log = logging.getLogger("xdr.train")
# settings that change no result: a rerun with other values resumes the same run
_RUN_NEUTRAL = {"num_workers", "use_gpu", "cpus_per_worker", "max_failures", "report_every", "storage"}


def run_name(config: TrainEncoderConfig) -> str:
    digest = hashlib.sha256(config.model_dump_json(exclude=_RUN_NEUTRAL).encode()).hexdigest()[:12]
    return f"train-{digest}"


def load_sets(storage: Storage, sources: list[TrainDataConfig]) -> tuple[list, list]:
    from xdr.train.data import load_parallel_jsonl, load_triplets, load_xquad

    sets, rejects = [], []
    for source in sources:
        if source.kind == "xquad":
            articles = range(source.articles[0], source.articles[1] + 1) if source.articles else None
            data, bad = load_xquad(storage, source.path, languages=tuple(source.languages or ()) or None,
                                   articles=articles)
        else:
            files = storage.expand(source.path)
            if not files:
                raise ValueError(f"{source.path!r} names no files")
            loader = load_parallel_jsonl if source.kind == "parallel_jsonl" else load_triplets
            data, bad = loader(storage, files)
        sets.append(data)
        rejects += bad
    return sets, rejects


def _sampler(config: TrainEncoderConfig, sets: list, seed: int, rank: int, world: int, transform=None):
    from xdr.train.samplers import HybridBatchSampler

    return HybridBatchSampler(sets, batch_size=config.batch_size, kind=config.batch_kind, alpha=config.alpha,
                              negatives=config.negatives, seed=seed, rank=rank, world_size=world, transform=transform)


def code_switcher(config: TrainEncoderConfig, storage: Storage):
    """The code-switching transform of the training batches, or None."""
    if not config.code_switch:
        return None
    from xdr.train.codeswitch import CodeSwitcher, load_muse

    files = [f for pattern in config.code_switch.dictionaries for f in storage.expand(pattern)]
    if not files:
        raise ValueError(f"code_switch.dictionaries matched no file: {config.code_switch.dictionaries}")
    return CodeSwitcher(load_muse(storage, files), config.code_switch.ratio, config.code_switch.apply_to)


def train_loop_per_worker(config_dict: dict) -> None:
    """Runs in every Ray Train worker."""
    from transformers import get_linear_schedule_with_warmup

    from xdr.train.loop import train_step, validation_loss
    from xdr.train.model import TrainableEncoder

    config = TrainEncoderConfig.model_validate(config_dict)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed)
    storage = Storage(config.storage)
    train_sets, _ = load_sets(storage, config.train)
    sampler = _sampler(config, train_sets, config.seed, rank, world, code_switcher(config, storage))
    validation = []
    if config.validation:
        val_sets, _ = load_sets(storage, config.validation)
        val_sampler = _sampler(config, val_sets, config.seed + 1, rank, world)
        n = min(config.validation_batches, val_sampler.batches_per_epoch)
        validation = [val_sampler.local_batch(0, b) for b in range(n)]

    encoder = TrainableEncoder(local_model(config.model, storage), pooling=config.pooling, normalize=config.normalize,
                               lora=config.lora.model_dump() if config.lora else None)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    progress = {"step": 0, "best_val": None, "bad_validations": 0, "val_losses": [], "resumed_at": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=False)
        encoder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        progress = state["progress"]
        progress["resumed_at"].append(progress["step"])  # a restart after a failure or a driver rerun
    model = ray.train.torch.prepare_model(encoder)
    autocast = torch.bfloat16 if config.use_gpu else None
    loss_kwargs = {"recipe": config.recipe, "temperature": config.temperature,
                   "query_max_tokens": config.query_max_tokens, "passage_max_tokens": config.passage_max_tokens}

    started, examples = time.perf_counter(), 0
    batches = iter(sampler)
    while progress["step"] < config.steps:
        loss = train_step(model, optimizer, scheduler, next(batches), autocast_dtype=autocast, **loss_kwargs)
        progress["step"] += 1
        examples += config.batch_size
        step = progress["step"]
        metrics = {"step": step, "loss": loss, "examples_per_s": examples / (time.perf_counter() - started)}
        stop = False
        if validation and (step % config.validate_every == 0 or step == config.steps):
            val = validation_loss(model, validation, autocast_dtype=autocast, **loss_kwargs)
            progress["val_losses"].append([step, val])
            metrics["val_loss"] = val
            if progress["best_val"] is None or val < progress["best_val"]:
                progress["best_val"], progress["bad_validations"] = val, 0
                if rank == 0:
                    _export_model(storage, config, encoder, step, val)
            else:
                progress["bad_validations"] += 1
                stop = progress["bad_validations"] >= config.patience
        end = stop or step == config.steps
        if step % config.checkpoint_every == 0 or end:
            if not validation and end and rank == 0:
                _export_model(storage, config, encoder, step, None)
            _report_with_checkpoint(metrics, rank, encoder, optimizer, scheduler, sampler, progress, end)
        elif step % config.report_every == 0:
            ray.train.report(metrics)
        if stop:
            break


def _report_with_checkpoint(metrics, rank, encoder, optimizer, scheduler, sampler, progress, end: bool) -> None:
    """Every worker reports (a barrier); rank 0 alone attaches the checkpoint."""
    metrics = {**metrics, "done": end}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"model": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "progress": progress},
                   Path(folder) / "state.pt")
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def _export_model(storage: Storage, config: TrainEncoderConfig, encoder, step: int, val_loss: float | None) -> None:
    """The model folder at <output>/model, written file by file (each file atomically)."""
    with tempfile.TemporaryDirectory() as folder:
        encoder.save(folder)
        for path in sorted(Path(folder).iterdir()):
            storage.write_bytes(join(config.output, "model", path.name), path.read_bytes())
    storage.write_bytes(join(config.output, "model", "xdr_train.json"),
                        json.dumps({"step": step, "val_loss": val_loss, **encoder.parameter_counts()}).encode())


def _run_storage(storage: Storage, config: TrainEncoderConfig) -> dict:
    uri = join(config.output, "checkpoints")
    if is_s3(uri):  # an explicit filesystem carries the configured endpoint (SeaweedFS, MinIO, ...)
        fs, path = storage.filesystem(uri)
        return {"storage_path": path, "storage_filesystem": fs}
    Path(uri).mkdir(parents=True, exist_ok=True)
    return {"storage_path": uri}


def run_training(config: TrainEncoderConfig) -> dict[str, Any]:
    config = config.model_copy(update={"storage": Storage(config.storage).resolved()})
    storage = Storage(config.storage)
    _, rejects = load_sets(storage, config.train + config.validation)  # fail here, before any worker starts
    for reject in rejects[:20]:
        log.warning("training row rejected: %s:%d %s", reject.source, reject.line, reject.reason)
    started = time.perf_counter()
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=config.model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        run_config=RunConfig(name=run_name(config), **_run_storage(storage, config),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=config.max_failures)))
    result = trainer.fit()
    if result.error:
        raise result.error
    info = json.loads(storage.read_bytes(join(config.output, "model", "xdr_train.json")))
    with result.checkpoint.as_directory() as folder:
        progress = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=False)["progress"]
    manifest = _write_manifest(storage, config, progress, info, rejects, time.perf_counter() - started,
                               result.metrics or {})
    return manifest


def _write_manifest(storage, config, progress, info, rejects, seconds, last_metrics: dict) -> dict:
    from xdr.manifest import code_version

    data_files = []
    for source in config.train + config.validation:
        # what load_sets read: an XQuAD folder's JSON files (not its README or licence), else the pattern's files
        files = (storage.list_files(source.path, suffix=".json") if source.kind == "xquad"
                 else storage.expand(source.path))
        data_files += [vars(storage.record(f)) for f in files]
    for pattern in config.code_switch.dictionaries if config.code_switch else []:
        data_files += [vars(storage.record(f)) for f in storage.expand(pattern)]
    manifest = {
        "status": "complete", "run_name": run_name(config), "config": config.model_dump(mode="json"),
        "code_version": code_version(), "model_folder": join(config.output, "model"),
        "steps": progress["step"], "best_step": info["step"], "best_val_loss": info["val_loss"],
        "parameters": info.get("parameters"), "trainable_parameters": info.get("trainable_parameters"),
        "val_losses": progress["val_losses"], "resumed_at": progress["resumed_at"], "rejects": len(rejects),
        "reject_examples": [vars(r) for r in rejects[:20]], "data_files": data_files, "seconds": round(seconds, 1),
        "examples_per_s": last_metrics.get("examples_per_s"),  # of the last attempt, start-up excluded
    }
    storage.write_bytes(join(config.output, "manifest.json"), json.dumps(manifest, indent=2).encode())
    return manifest


def format_summary(manifest: dict) -> str:
    val = manifest["best_val_loss"]
    return "\n".join([
        f"run:    {manifest['config']['output']}  ({manifest['run_name']}, {manifest['steps']} steps, "
        f"{manifest['seconds']:.0f}s)",
        f"model:  {manifest['model_folder']}  (step {manifest['best_step']}"
        + (f", validation loss {val:.4f})" if val is not None else ", last step)"),
        f"data:   {len(manifest['data_files'])} files, {manifest['rejects']} rows rejected",
        f"use it: --encoder.model={manifest['model_folder']}",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_job("Train a dual encoder on Ray Train.", argv, TrainEncoderConfig, run_training, format_summary)


if __name__ == "__main__":
    main()
