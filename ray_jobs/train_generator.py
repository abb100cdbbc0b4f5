"""The query-generator training job (xQG, docs/METHOD.md section 1) on Ray Train.

    xdr train-generator --config configs/train_generator_xquad.yaml
    ray job submit --working-dir . -- python -m ray_jobs.train_generator --config ... --num_workers=8 --use_gpu=true

A Hugging Face seq2seq model (mT5 in the paper) learns to write the question of a passage in a given
language, prompted exactly as the indexing job's generator prompts it (xdr.models.generator.build_prompt). Each
worker takes its slice of every global batch and accumulates gradients over micro-batches; checkpoints,
resume, validation, early stopping and the manifest are ray_jobs.training's, as for the encoder job. The best
model by validation loss is written to <output>/model, which `generator.model` takes.
"""

from __future__ import annotations

import functools
from typing import Any

from ray_jobs import training
from ray_jobs.common import run_job
from xdr.config import TrainGeneratorConfig
from xdr.io.storage import Storage
from xdr.models.files import local_model
from xdr.train.sources import load_examples


def generator_task(config: TrainGeneratorConfig, storage: Storage, rank: int, world: int) -> training.WorkerTask:
    from xdr.train.qg import ExampleSampler, TrainableGenerator, qg_train_step, qg_validation_loss

    examples, _ = load_examples(storage, config.train, config)
    sampler = ExampleSampler(examples, batch_size=config.batch_size, seed=config.seed, rank=rank, world_size=world)
    validation = []
    if config.validation:
        val_examples, _ = load_examples(storage, config.validation, config)
        val_batch = min(config.batch_size, len(val_examples) // world * world)  # a small set: one smaller batch
        if val_batch == 0:
            raise ValueError(f"{len(val_examples)} validation examples cannot be split over {world} workers")
        val_sampler = ExampleSampler(val_examples, batch_size=val_batch, seed=config.seed + 1, rank=rank,
                                     world_size=world)
        validation = [val_sampler.local_batch(0, b)
                      for b in range(min(config.validation_batches, val_sampler.batches_per_epoch))]
    generator = TrainableGenerator(local_model(config.model, storage),
                                   lora=config.lora.model_dump() if config.lora else None)
    kw = {"micro_batch_size": config.micro_batch_size, "template": config.prompt_template,
          "max_input_tokens": config.max_input_tokens, "max_target_tokens": config.max_target_tokens}
    return training.WorkerTask(sampler, validation, generator, qg_train_step, qg_validation_loss, kw,
                               config.batch_size)


def train_loop_per_worker(config_dict: dict) -> None:
    """Runs in every Ray Train worker."""
    training.worker_loop(TrainGeneratorConfig.model_validate(config_dict), generator_task)


def run_training(config: TrainGeneratorConfig) -> dict[str, Any]:
    def load_data(storage: Storage) -> list:
        examples, rejects = load_examples(storage, config.train, config)
        if len(examples) < config.batch_size:
            raise ValueError(f"the training sets hold {len(examples)} examples, fewer than batch_size "
                             f"{config.batch_size}")
        if config.validation:
            rejects += load_examples(storage, config.validation, config)[1]
        return rejects

    return training.run_training(config, train_loop_per_worker, load_data, name_prefix="train-generator")


format_summary = functools.partial(training.format_summary, use_it="generator.model")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_job("Train the xQG query generator on Ray Train.", argv, TrainGeneratorConfig, run_training,
                   format_summary)


if __name__ == "__main__":
    main()
