"""The encoder training job: hybrid-batch (or xDR-recipe) contrastive training on Ray Train.

    xdr train-encoder --config configs/train_hybrid_xquad.yaml
    ray job submit --working-dir . -- python -m ray_jobs.train_encoder --config ... --num_workers=8 --use_gpu=true

Each worker loads the data, draws its slice of every global batch (xdr.train.samplers), encodes,
and computes the loss over the global batch (vectors gathered across workers). Checkpoints, resume after a
failure or a driver rerun, validation and the manifest are ray_jobs.training's. The best model by validation
loss is written to <output>/model, which `encoder.model` takes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from ray_jobs import training
from ray_jobs.common import run_job
from xdr.config import TrainEncoderConfig
from xdr.io.storage import Storage
from xdr.models.files import local_model
from xdr.train.sources import load_sets


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


def encoder_task(config: TrainEncoderConfig, storage: Storage, rank: int, world: int) -> training.WorkerTask:
    from xdr.train.loop import train_step, validation_loss
    from xdr.train.model import TrainableEncoder

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
    kw = {"recipe": config.recipe, "temperature": config.temperature,
          "query_max_tokens": config.query_max_tokens, "passage_max_tokens": config.passage_max_tokens}
    return training.WorkerTask(sampler, validation, encoder, train_step, validation_loss, kw, config.batch_size)


def train_loop_per_worker(config_dict: dict) -> None:
    """Runs in every Ray Train worker."""
    training.worker_loop(TrainEncoderConfig.model_validate(config_dict), encoder_task)


def run_training(config: TrainEncoderConfig, callbacks: Sequence = ()) -> dict[str, Any]:
    def load_data(storage: Storage) -> list:
        return load_sets(storage, config.train + config.validation)[1]

    return training.run_training(config, train_loop_per_worker, load_data, callbacks=callbacks,
                                 extra_files=config.code_switch.dictionaries if config.code_switch else [])


format_summary = functools.partial(training.format_summary, use_it="encoder.model")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_job("Train a dual encoder on Ray Train.", argv, TrainEncoderConfig, run_training, format_summary)


if __name__ == "__main__":
    main()
