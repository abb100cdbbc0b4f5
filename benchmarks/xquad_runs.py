"""What the XQuAD training experiments share: fine-tune USE v3 with the training library in process (one
worker, so the runs share one loaded data set) and evaluate it with the LAReQA protocol on XQuAD-R.

Used by exp_hybrid_xquad.py (batch kinds), exp_lora_xquad.py (LoRA against full fine-tuning on held-out
languages) and exp_codeswitch_xquad.py (code-switched queries).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xdr.config import EncoderConfig  # noqa: E402
from xdr.encoder import UseTorchEncoder  # noqa: E402
from xdr.eval.experiments import lareqa_evaluate  # noqa: E402
from xdr.train.adapters import merged  # noqa: E402
from xdr.train.loop import train_step, validation_loss  # noqa: E402
from xdr.train.model import TrainableEncoder  # noqa: E402
from xdr.train.samplers import HybridBatchSampler  # noqa: E402

METRICS = ("mono", "cross", "multi", "language_bias")
SHARED = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class RunSettings:
    steps: int = 80
    batch_size: int = 32
    lr: float = 5e-5
    temperature: float = 0.05
    validate_every: int = 20


@dataclass
class TrainedRun:
    model: TrainableEncoder
    curve: list  # [step, validation loss]
    seconds: float  # training alone, validations included
    trainable_parameters: int
    parameters: int


def train_use(train, val, settings: RunSettings, *, seed: int, kind: str = "hybrid", alpha: float = 0.5,
              lora: dict | None = None, transform=None) -> TrainedRun:
    """USE v3 fine-tuned for `settings.steps` steps; the weights of the best validation are kept."""
    torch.manual_seed(seed)
    model = TrainableEncoder("usem3", lora=lora)
    counts = model.parameter_counts()
    sampler = HybridBatchSampler([train], batch_size=settings.batch_size, kind=kind, alpha=alpha, negatives=1,
                                 seed=seed, transform=transform)
    val_sampler = HybridBatchSampler([val], batch_size=settings.batch_size, kind="hybrid", seed=1000)
    val_batches = [val_sampler.global_batch(0, b) for b in range(val_sampler.batches_per_epoch)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=0.01)
    kw = {"recipe": "hybrid", "temperature": settings.temperature, "query_max_tokens": 32, "passage_max_tokens": 128}
    best, best_state, curve = float("inf"), None, []
    started = time.perf_counter()
    batches = iter(sampler)
    for step in range(1, settings.steps + 1):
        train_step(model, optimizer, None, next(batches), autocast_dtype=None, **kw)
        if step % settings.validate_every == 0 or step == settings.steps:
            loss = validation_loss(model, val_batches, autocast_dtype=None, **kw)
            curve.append([step, round(loss, 4)])
            if loss < best:
                best, best_state = loss, copy.deepcopy(model.model.state_dict())
    seconds = time.perf_counter() - started
    model.model.load_state_dict(best_state)
    return TrainedRun(model, curve, seconds, counts["trainable_parameters"], counts["parameters"])


def inference_encoder(model: TrainableEncoder) -> UseTorchEncoder:
    """The trained model as the indexing job would load it: LoRA merged into the weights."""
    return UseTorchEncoder(EncoderConfig(model="usem3", batch_size=128), "cpu", model=merged(model.model, model.lora))


def evaluate(encoder, data) -> dict:
    result = lareqa_evaluate(data, encoder)
    return {m: {k: v for k, v in result[m].items() if k != "pairs"} for m in METRICS}


def mean_sd(values) -> dict:
    values = list(values)
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def add_run_arguments(parser: argparse.ArgumentParser, *, lr_help: str | None = None) -> None:
    """The data, training and output arguments every XQuAD training experiment takes."""
    parser.add_argument("--xquad", type=Path, default=SHARED / "xquad")
    parser.add_argument("--xquad-r", type=Path, default=SHARED / "xquad-r")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5, help=lr_help)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--plot", type=Path)


def machine_line() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, CPU only, {time.strftime('%Y-%m-%d')}"
