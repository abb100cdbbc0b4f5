"""Training the xQG query generator: (passage, question, language) examples, their batch sampler, the seq2seq
model with its teacher-forced loss, and one optimizer step with gradient accumulation.

The prompt is `xdr.models.generator.build_prompt`, the very function the indexing job's generator calls, so training
and generation cannot drift apart. Examples come from parallel QA sets (XQuAD, parallel JSON lines: the
paragraph in one language, the question in each of the others, as the paper's XOR-TyDi training pairs an
English passage with a question in the target language), from retrieval triplets (query + its positive
passage, with `query_lang`) or from JSON lines of ready pairs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from xdr.languages import language_name
from xdr.models.generator import build_prompt
from xdr.train.adapters import merged, parameter_counts, with_lora
from xdr.train.data import Passage, TrainReject, Triplet, parse_json_lines
from xdr.train.loop import apply_gradients
from xdr.train.samplers import EpochSampler, seeded_rng

if TYPE_CHECKING:
    from xdr.io.storage import Storage
    from xdr.train.data import ParallelSet


@dataclass(frozen=True)
class QGExample:
    passage: Passage
    lang: str  # the question's language: the prompt asks for it
    question: str

    def prompt(self, template: str) -> str:
        return build_prompt(self.passage.title, self.passage.text, self.lang, template)


def qg_examples(data: ParallelSet, passage_language: str, languages: list[str] | None = None) -> list[QGExample]:
    """The paragraph in `passage_language` with the question in each of `languages` (default: every other
    language of the set)."""
    if passage_language not in data.languages:
        raise ValueError(f"passage_language {passage_language!r} is not in the set's {data.languages}")
    targets = languages or [x for x in data.languages if x != passage_language]
    absent = sorted(set(targets) - set(data.languages))
    if absent:
        raise ValueError(f"question languages {absent} are not in the set's {data.languages}")
    return [QGExample(item.passage[passage_language], lang, item.question[lang])
            for item in data.items for lang in targets]


def qg_from_triplets(triplets: list[Triplet], source: str) -> tuple[list[QGExample], list[TrainReject]]:
    """Retrieval triplets (XOR-TyDi in Tevatron form) as generator examples: the positive passage and the query
    in `query_lang`; a triplet without a known query language cannot be prompted and is rejected."""
    examples, rejects = [], []
    for number, t in enumerate(triplets, start=1):
        try:
            language_name(t.query_lang)
        except ValueError as err:
            rejects.append(TrainReject(source, 0, f"triplet {number} ({t.query[:40]!r}): query_lang: {err}"))
            continue
        examples.append(QGExample(t.positive, t.query_lang, t.query))
    return examples, rejects


def _qg_example(obj: dict) -> QGExample:
    text = obj.get("text", obj.get("passage"))
    if not isinstance(text, str) or not text.strip():
        raise ValueError("missing text")
    for key in ("question", "lang"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f"missing {key}")
    language_name(obj["lang"])  # the prompt names the language: an unknown code is an error
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise ValueError("title is not a string")
    return QGExample(Passage(title, text), obj["lang"], obj["question"])


def load_qg_jsonl(storage: Storage, uris: list[str]) -> tuple[list[QGExample], list[TrainReject]]:
    """Rows `{"text", "question", "lang", "title"?}` (`passage` is taken for `text`): one example each."""
    rejects: list[TrainReject] = []
    examples = parse_json_lines(storage, uris, rejects, _qg_example)
    if not examples:
        raise ValueError(f"no usable rows in {uris}: {[r.reason for r in rejects[:5]]}")
    return examples, rejects


class ExampleSampler(EpochSampler):
    """Every example once per epoch, in a seeded order; the global batch is sliced across ranks."""

    def __init__(self, examples: list[QGExample], *, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        super().__init__(batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
        if len(examples) < batch_size:
            raise ValueError(f"{len(examples)} examples are fewer than batch_size={batch_size}")
        self.examples = examples
        self._order: tuple[int | None, np.ndarray | None] = (None, None)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.examples) // self.batch_size

    def global_batch(self, epoch: int, number: int) -> list[QGExample]:
        epoch_of_order, order = self._order
        if epoch_of_order != epoch or order is None:
            order = seeded_rng(self.seed, epoch, 4).permutation(len(self.examples))
            self._order = (epoch, order)
        return [self.examples[i] for i in order[number * self.batch_size:(number + 1) * self.batch_size]]

    def _fingerprint_key(self) -> tuple:
        return len(self.examples), self.batch_size, "qg"


class TrainableGenerator(nn.Module):
    """A Hugging Face seq2seq model (mT5 in the paper) and its tokenizer; the call returns the mean token
    cross-entropy of the questions given the prompts (teacher forcing)."""

    def __init__(self, model_name: str, *, lora: dict | None = None):
        super().__init__()
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.model = AutoModelForSeq2SeqLM.from_pretrained(model_name)
        self.tokenizer = AutoTokenizer.from_pretrained(model_name)
        self.lora = lora
        if lora:
            self.model = with_lora(self.model, lora)

    def forward(self, prompts: list[str], questions: list[str], max_input_tokens: int,
                max_target_tokens: int) -> torch.Tensor:
        device = next(self.model.parameters()).device
        inputs = self.tokenizer(prompts, padding=True, truncation=True, max_length=max_input_tokens,
                                return_tensors="pt")
        labels = self.tokenizer(text_target=questions, padding=True, truncation=True, max_length=max_target_tokens,
                                return_tensors="pt")["input_ids"]
        labels[labels == self.tokenizer.pad_token_id] = -100  # padding is no target
        return self.model(**{k: v.to(device) for k, v in inputs.items()}, labels=labels.to(device)).loss

    def save(self, folder) -> None:
        """A folder that `generator.model` takes (LoRA merged into the weights)."""
        merged(self.model, self.lora).save_pretrained(folder)  # type: ignore[operator]  # a transformers model
        self.tokenizer.save_pretrained(folder)

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self)


def _micro_batches(batch: list[QGExample], size: int) -> list[list[QGExample]]:
    return [batch[i:i + size] for i in range(0, len(batch), size)]


def _loss(model, examples: list[QGExample], template: str, max_input_tokens: int, max_target_tokens: int):
    return model([e.prompt(template) for e in examples], [e.question for e in examples], max_input_tokens,
                 max_target_tokens)


def qg_train_step(model, optimizer, scheduler, batch: list[QGExample], *, micro_batch_size: int,
                  autocast_dtype: torch.dtype | None, template: str, max_input_tokens: int, max_target_tokens: int,
                  max_grad_norm: float | None = 1.0) -> float:
    """One optimizer step over this worker's share of the global batch, in micro-batches whose gradients
    accumulate (each weighted by its share of the examples); DDP synchronises on the last one only."""
    model.train()
    device = next(model.parameters()).device.type
    parts = _micro_batches(batch, micro_batch_size)
    total = 0.0
    for i, part in enumerate(parts):
        sync = contextlib.nullcontext() if i == len(parts) - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = _loss(model, part, template, max_input_tokens, max_target_tokens) * (len(part) / len(batch))
            loss.backward()
        total += float(loss.detach())
    apply_gradients(model, optimizer, scheduler, max_grad_norm)
    return total


@torch.no_grad()
def qg_validation_loss(model, batches: list[list[QGExample]], *, micro_batch_size: int,
                       autocast_dtype: torch.dtype | None, template: str, max_input_tokens: int,
                       max_target_tokens: int) -> float:
    """Mean loss over fixed validation batches (example-weighted)."""
    model.eval()
    device = next(model.parameters()).device.type
    losses, counts = [], []
    for batch in batches:
        for part in _micro_batches(batch, micro_batch_size):
            with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                losses.append(float(_loss(model, part, template, max_input_tokens, max_target_tokens)))
            counts.append(len(part))
    return float(np.average(losses, weights=counts)) if losses else float("nan")
