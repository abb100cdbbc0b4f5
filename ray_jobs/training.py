"""What the training jobs share on Ray Train: the worker loop (resume, steps, validation, early stopping,
checkpoints, the best model's export), the trainer with its failure handling and deterministic run name, and
the run's manifest. Each job (train_encoder, train_generator) gives its data loading and a `WorkerTask`.

Rank 0 reports a checkpoint every `checkpoint_every` steps (weights, optimizer, schedule, sampler position); a
failed worker group restarts from it (FailureConfig), and rerunning the same command after the driver died
resumes it too: the run's name is derived from the config, so Ray Train finds its own state under
<output>/checkpoints. The best model by validation loss is written to <output>/model.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from xdr.io.storage import Storage
from xdr.train.samplers import step_seed
from xdr.train.sources import run_name, write_training_manifest
from xdr.uris import is_s3, join

log = logging.getLogger("xdr.train")


@dataclass
class WorkerTask:
    """One job's pieces inside a worker: its sampler (this rank's batches), fixed validation batches, the model
    (with `save(folder)` and `parameter_counts()`), and how to take a step and a validation loss."""

    sampler: Any
    validation: list
    model: torch.nn.Module
    step: Callable[..., float]  # (wrapped model, optimizer, scheduler, batch, autocast_dtype=, **kw) -> loss
    val_loss: Callable[..., float]  # (wrapped model, batches, autocast_dtype=, **kw) -> loss
    loss_kwargs: dict
    examples_per_step: int


def _mean_over_ranks(value: float) -> float:
    """Every rank must take the same best-model and early-stopping decisions."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64,
                          device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
    torch.distributed.all_reduce(tensor)
    return float(tensor.item()) / torch.distributed.get_world_size()


def worker_loop(config, build_task: Callable[[Any, Storage, int, int], WorkerTask]) -> None:
    """The training loop of every Ray Train worker."""
    from transformers import get_linear_schedule_with_warmup

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed)
    storage = Storage(config.storage)
    task = build_task(config, storage, rank, world)
    optimizer = torch.optim.AdamW([p for p in task.model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    progress: dict[str, Any] = {"step": 0, "best_val": None, "bad_validations": 0, "val_losses": [],
                                "resumed_at": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=False)
        task.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        task.sampler.load_state_dict(state["sampler"])
        progress = state["progress"]
        progress["resumed_at"].append(progress["step"])  # a restart after a failure or a driver rerun
    model = ray.train.torch.prepare_model(task.model)
    autocast = torch.bfloat16 if config.use_gpu else None

    started, examples = time.perf_counter(), 0
    batches = iter(task.sampler)
    while progress["step"] < config.steps:
        torch.manual_seed(step_seed(config.seed, progress["step"], rank))
        loss = task.step(model, optimizer, scheduler, next(batches), autocast_dtype=autocast, **task.loss_kwargs)
        progress["step"] += 1
        examples += task.examples_per_step
        step = progress["step"]
        metrics = {"step": step, "loss": loss, "examples_per_s": examples / (time.perf_counter() - started)}
        stop = False
        if task.validation and (step % config.validate_every == 0 or step == config.steps):
            val = _mean_over_ranks(task.val_loss(model, task.validation, autocast_dtype=autocast, **task.loss_kwargs))
            progress["val_losses"].append([step, val])
            metrics["val_loss"] = val
            if progress["best_val"] is None or val < progress["best_val"]:
                progress["best_val"], progress["bad_validations"] = val, 0
                if rank == 0:
                    _export_model(storage, config, task.model, step, val)
            else:
                progress["bad_validations"] += 1
                stop = progress["bad_validations"] >= config.patience
        end = stop or step == config.steps
        if step % config.checkpoint_every == 0 or end:
            if not task.validation and end and rank == 0:
                _export_model(storage, config, task.model, step, None)
            _report_with_checkpoint(metrics, rank, task, optimizer, scheduler, progress, end)
        elif step % config.report_every == 0:
            ray.train.report(metrics)
        if stop:
            break


def _report_with_checkpoint(metrics, rank, task: WorkerTask, optimizer, scheduler, progress, end: bool) -> None:
    """Every worker reports (a barrier); rank 0 alone attaches the checkpoint."""
    metrics = {**metrics, "final": end}  # not "done": Ray Tune ends a trial on a metric of that name
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"model": task.model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "sampler": task.sampler.state_dict(), "progress": progress},
                   Path(folder) / "state.pt")
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def _export_model(storage: Storage, config, model, step: int, val_loss: float | None) -> None:
    """The model folder at <output>/model, written file by file (each file atomically)."""
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        for path in sorted(Path(folder).iterdir()):
            storage.write_bytes(join(config.output, "model", path.name), path.read_bytes())
    storage.write_bytes(join(config.output, "model", "xdr_train.json"),
                        json.dumps({"step": step, "val_loss": val_loss, **model.parameter_counts()}).encode())


def ray_storage(storage: Storage, uri: str) -> dict:
    """RunConfig's storage keywords for a folder (Ray Train's and Ray Tune's state)."""
    if is_s3(uri):  # an explicit filesystem carries the configured endpoint (SeaweedFS, MinIO, ...)
        fs, path = storage.filesystem(uri)
        return {"storage_path": path, "storage_filesystem": fs}
    Path(uri).mkdir(parents=True, exist_ok=True)
    return {"storage_path": uri}


def run_training(config, loop: Callable[[dict], None], load_data: Callable[[Storage], list], *,
                 name_prefix: str = "train", extra_files: Sequence[str] = (), callbacks: Sequence = ()
                 ) -> dict[str, Any]:
    """Runs `loop` (a module-level function taking the config as a dict) on Ray Train and writes the manifest.
    `load_data(storage)` loads every set once on the driver, so that bad data fails before any worker starts,
    and returns the rejected rows; `extra_files` (globs) are recorded in the manifest beside the data;
    `callbacks` are Ray Train callbacks (a sweep's trial passes Tune's)."""
    config = config.model_copy(update={"storage": Storage(config.storage).resolved()})
    storage = Storage(config.storage)
    rejects = load_data(storage)
    for reject in rejects[:20]:
        log.warning("training row rejected: %s:%d %s", reject.source, reject.line, reject.reason)
    started = time.perf_counter()
    name = run_name(config, name_prefix)
    trainer = TorchTrainer(
        loop, train_loop_config=config.model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        run_config=RunConfig(name=name, **ray_storage(storage, join(config.output, "checkpoints")),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=config.max_failures),
                             callbacks=list(callbacks)))
    result = trainer.fit()
    if result.error:
        raise result.error
    info = json.loads(storage.read_bytes(join(config.output, "model", "xdr_train.json")))
    assert result.checkpoint is not None  # the loop reports one at its last step
    with result.checkpoint.as_directory() as folder:
        progress = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=False)["progress"]
    return write_training_manifest(storage, config, name, progress, info, rejects, list(extra_files),
                           time.perf_counter() - started, result.metrics or {})


def format_summary(manifest: dict, use_it: str) -> str:
    val = manifest["best_val_loss"]
    return "\n".join([
        f"run:    {manifest['config']['output']}  ({manifest['run_name']}, {manifest['steps']} steps, "
        f"{manifest['seconds']:.0f}s)",
        f"model:  {manifest['model_folder']}  (step {manifest['best_step']}"
        + (f", validation loss {val:.4f})" if val is not None else ", last step)"),
        f"data:   {len(manifest['data_files'])} files, {manifest['rejects']} rows rejected",
        f"use it: --{use_it}={manifest['model_folder']}",
    ])
