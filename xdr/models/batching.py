"""Length-grouped batching and background tokenisation shared by the model stages."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of rows sorted by length (longest first), so each batch pads little.

    The sort is stable, so the batches depend only on the lengths and the batch size.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of id lists -> (input_ids, attention_mask), both int64 [B, max_len]."""
    width = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a background thread, `depth` ahead of the consumer.

    The model stages tokenise the next chunk (Rust tokenizers release the GIL) while the device
    runs the current one, which keeps tokenisation off the accelerator's critical path.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            for item in items:
                buffer.put(item)
        except BaseException as err:  # noqa: BLE001 -- handed to the consumer, which re-raises it
            failure.append(err)
        finally:
            buffer.put(done)

    threading.Thread(target=produce, daemon=True, name="xdr-prefetch").start()
    while (item := buffer.get()) is not done:
        yield item
    if failure:
        raise failure[0]


def chunks(n_items: int, chunk_size: int) -> list[range]:
    return [range(i, min(i + chunk_size, n_items)) for i in range(0, n_items, chunk_size)]
