"""Batch samplers for hybrid-batch training (docs/METHOD.md section 2).

- **xx_mono**: every triplet of a batch in one language, drawn uniformly per batch.
- **xy**: per triplet a query language l_q drawn uniformly and a passage language l_d != l_q; the positive
  and the negatives share l_d.
- **hybrid**: each batch is xx_mono with probability alpha (0.5), else xy.

Each batch comes from one dataset; over an epoch every dataset contributes batches in proportion to its
size (each dataset's items are permuted and cut into batches, and the batches of all datasets are
shuffled together), so every item is seen once per epoch. Triplet datasets (Tevatron form) keep their own
languages. A batch is a pure function of (seed, epoch, batch number), hence:
- deterministic from the seed, whatever the number of workers;
- rank-aware: every rank computes the same global batch and takes its own contiguous slice, so the
  ranks' triplets are disjoint and together form the global batch (negatives are gathered across ranks);
- resumable mid-epoch: the state is (epoch, next batch); after `load_state_dict` the remaining batches are
  exactly those an uninterrupted run would have drawn.

Written here because no library has it: sentence-transformers' samplers (PROPORTIONAL, NO_DUPLICATES)
choose the dataset per batch but not the language make-up of the triplets inside it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from xdr.train.data import ParallelSet, Passage, Triplet, negatives_by_group

BATCH_KINDS = ("xx_mono", "xy", "hybrid")


@dataclass(frozen=True)
class TrainingExample:
    query: str
    positive: Passage
    negatives: tuple[Passage, ...]
    query_lang: str
    passage_lang: str
    kind: str  # "xx_mono", "xy" or "given"


def seeded_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def step_seed(seed: int, step: int, rank: int) -> int:
    """torch's seed for one training step of one worker (dropout): a pure function of (seed, step, rank), so
    a run resumed from a checkpoint draws the masks the uninterrupted run drew."""
    return int(seeded_rng(seed, step, rank, 5).integers(2**63 - 1))


class EpochSampler:
    """What every training sampler shares: global batches that are a pure function of (seed, epoch, batch
    number), each rank's contiguous slice of them, endless iteration and a resumable (epoch, batch) state.
    Subclasses give `batches_per_epoch`, `global_batch` and `_fingerprint_key`."""

    def __init__(self, *, batch_size: int, seed: int, rank: int, world_size: int):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} workers")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.next_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        raise NotImplementedError

    def global_batch(self, epoch: int, number: int) -> list:
        raise NotImplementedError

    def _fingerprint_key(self) -> tuple:
        raise NotImplementedError

    def local_batch(self, epoch: int, number: int) -> list:
        """This rank's contiguous slice of the global batch."""
        per_rank = self.batch_size // self.world_size
        return self.global_batch(epoch, number)[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[list]:
        """This rank's batches from the current state on, forever (epoch after epoch)."""
        while True:
            if self.next_batch >= self.batches_per_epoch:
                self.epoch, self.next_batch = self.epoch + 1, 0
            batch = self.local_batch(self.epoch, self.next_batch)
            self.next_batch += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "next_batch": self.next_batch, "seed": self.seed,
                "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["fingerprint"] != self.fingerprint():
            raise ValueError("the checkpoint's sampler was built over other data or settings; start a new run")
        self.epoch, self.next_batch = state["epoch"], state["next_batch"]

    def fingerprint(self) -> int:
        """Changes when the data or the batch settings change (resuming then would draw other batches)."""
        return zlib.crc32(repr(self._fingerprint_key()).encode())


class HybridBatchSampler(EpochSampler):
    def __init__(self, datasets: list[ParallelSet | list[Triplet]], *, batch_size: int, kind: str = "hybrid",
                 alpha: float = 0.5, negatives: int = 1, seed: int = 0, rank: int = 0, world_size: int = 1,
                 transform=None):
        """`transform(example, rng)` rewrites each example with the batch's generator, after every other
        draw (code-switching, xdr.train.codeswitch): batches stay a pure function of (seed, epoch, batch)."""
        if kind not in BATCH_KINDS:
            raise ValueError(f"unknown batch kind {kind!r}; expected one of {', '.join(BATCH_KINDS)}")
        super().__init__(batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha {alpha} must lie in [0, 1]")
        sizes = [len(d.items) if isinstance(d, ParallelSet) else len(d) for d in datasets]
        if not datasets or min(sizes) < batch_size:
            raise ValueError(f"every dataset needs at least batch_size={batch_size} items; sizes: {sizes}")
        for d in datasets:
            if isinstance(d, ParallelSet) and kind != "xx_mono" and len(d.languages) < 2:
                raise ValueError(f"{kind} batches need at least two languages; the set has {d.languages}")
        self.datasets, self.sizes = datasets, sizes
        self.kind, self.alpha, self.negatives, self.transform = kind, alpha, negatives, transform
        self.groups = [negatives_by_group(d.items) if isinstance(d, ParallelSet) else {} for d in datasets]
        self._cached: tuple[int | None, list] = (None, [])  # the schedule of one epoch

    # --- the schedule ---------------------------------------------------------------------------
    @property
    def batches_per_epoch(self) -> int:
        return sum(size // self.batch_size for size in self.sizes)

    def schedule(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(dataset, item indexes) of every global batch of the epoch, in order (cached per epoch)."""
        if self._cached[0] == epoch:
            return self._cached[1]
        batches = []
        for d, size in enumerate(self.sizes):
            order = seeded_rng(self.seed, epoch, d, 1).permutation(size)
            batches += [(d, order[i:i + self.batch_size])
                        for i in range(0, size - self.batch_size + 1, self.batch_size)]
        shuffle = seeded_rng(self.seed, epoch, 2).permutation(len(batches))
        self._cached = (epoch, [batches[i] for i in shuffle])
        return self._cached[1]

    def global_batch(self, epoch: int, number: int) -> list[TrainingExample]:
        rng = seeded_rng(self.seed, epoch, number, 3)
        batch = self._draw(epoch, number, rng)
        return [self.transform(e, rng) for e in batch] if self.transform else batch

    def _draw(self, epoch: int, number: int, rng) -> list[TrainingExample]:
        dataset, items = self.schedule(epoch)[number]
        data = self.datasets[dataset]
        if not isinstance(data, ParallelSet):
            return [self._given(data[i], data, rng) for i in items]
        mono = self.kind == "xx_mono" or (self.kind == "hybrid" and rng.random() < self.alpha)
        languages = data.languages
        if mono:
            lang = languages[rng.integers(len(languages))]
            pairs = [(lang, lang)] * len(items)
        else:
            pairs = []
            for _ in items:
                lq = languages[rng.integers(len(languages))]
                others = [x for x in languages if x != lq]
                pairs.append((lq, others[rng.integers(len(others))]))
        return [self._parallel(data, dataset, i, lq, ld, rng, "xx_mono" if mono else "xy")
                for i, (lq, ld) in zip(items, pairs)]

    def _parallel(self, data: ParallelSet, dataset: int, i: int, lq: str, ld: str, rng, kind: str):
        item = data.items[i]
        own = item.passage[ld].text
        group = [j for j in self.groups[dataset][item.group] if data.items[j].passage[ld].text != own]
        pool = group if len(group) >= self.negatives else None
        negatives: list[Passage] = []
        while len(negatives) < self.negatives:  # the article's other paragraphs, else any other paragraph
            j = int(pool[rng.integers(len(pool))] if pool else rng.integers(len(data.items)))
            passage = data.items[j].passage[ld]
            if passage.text != own:
                negatives.append(passage)
        return TrainingExample(item.question[lq], item.passage[ld], tuple(negatives), lq, ld, kind)

    def _given(self, triplet: Triplet, data: list[Triplet], rng) -> TrainingExample:
        """A Tevatron triplet: its own negatives, resampled per batch; topped up with other triplets'
        positives when it has fewer than asked."""
        pool = list(triplet.negatives)
        if len(pool) >= self.negatives:
            negatives = [pool[k] for k in rng.choice(len(pool), self.negatives, replace=False)]
        else:
            negatives = pool
            while len(negatives) < self.negatives:
                other = data[int(rng.integers(len(data)))].positive
                if other.text != triplet.positive.text:
                    negatives.append(other)
        return TrainingExample(triplet.query, triplet.positive, tuple(negatives), triplet.query_lang,
                               triplet.passage_lang, "given")

    def _fingerprint_key(self) -> tuple:
        key: tuple = (self.sizes, self.batch_size, self.kind, self.alpha, self.negatives)
        if self.transform:  # runs without a transform keep the fingerprint they had before transforms existed
            key += (self.transform.fingerprint(),)
        return key
