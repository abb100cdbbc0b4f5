"""One training step and the validation loss, independent of how workers are started (Ray Train or not)."""

from __future__ import annotations

import zlib

import torch

from xdr.models.encoder import passage_text
from xdr.train.loss import contrastive_loss
from xdr.train.model import TrainableEncoder
from xdr.train.samplers import TrainingExample


def passage_keys(batch: list[TrainingExample]) -> torch.Tensor:
    """int64 [Q*G]: a key per passage text (equal texts, equal keys) for masking duplicates."""
    return torch.tensor([zlib.crc32(p.text.encode()) for e in batch for p in (e.positive, *e.negatives)],
                        dtype=torch.int64)


def batch_loss(model: TrainableEncoder, batch: list[TrainingExample], *, recipe: str, temperature: float,
               query_max_tokens: int, passage_max_tokens: int) -> torch.Tensor:
    """`model` may be wrapped (DistributedDataParallel): it is called, not reached into."""
    queries, passages = model([e.query for e in batch],
                              [passage_text(p.title, p.text) for e in batch for p in (e.positive, *e.negatives)],
                              query_max_tokens, passage_max_tokens)
    return contrastive_loss(queries, passages, passage_keys(batch).to(queries.device), recipe=recipe,
                            temperature=temperature)


def _device_type(model) -> str:
    return next(model.parameters()).device.type


def train_step(model, optimizer, scheduler, batch: list[TrainingExample], *, autocast_dtype: torch.dtype | None,
               max_grad_norm: float | None = 1.0, **loss_kwargs) -> float:
    model.train()
    with torch.autocast(_device_type(model), dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = batch_loss(model, batch, **loss_kwargs)
    loss.backward()
    apply_gradients(model, optimizer, scheduler, max_grad_norm)
    return float(loss.detach())


def apply_gradients(model, optimizer, scheduler, max_grad_norm: float | None) -> None:
    """Clip, step the optimizer and the schedule, clear the gradients."""
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def validation_loss(model, batches: list[list[TrainingExample]], *, autocast_dtype: torch.dtype | None,
                    **loss_kwargs) -> float:
    """Mean loss over fixed validation batches (the same batches at every evaluation)."""
    model.eval()
    losses = []
    for batch in batches:
        with torch.autocast(_device_type(model), dtype=autocast_dtype, enabled=autocast_dtype is not None):
            losses.append(float(batch_loss(model, batch, **loss_kwargs)))
    return sum(losses) / max(1, len(losses))
