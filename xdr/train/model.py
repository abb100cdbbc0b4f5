"""The encoder being trained: USE (stock or a fine-tuned folder) or any Hugging Face encoder, behind one
interface, so the same training loop trains both and writes a folder the indexing job's `encoder.model`
takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from xdr.models.encoder import pool
from xdr.models.references import ModelKind, model_kind
from xdr.train.adapters import merged, parameter_counts, with_lora


class TrainableEncoder(nn.Module):
    """encode(texts, max_tokens) -> [N, d] with gradients; save(folder)."""

    def __init__(self, model_name: str, *, pooling: str = "cls", normalize: bool = False, lora: dict | None = None):
        """`lora` ({rank, alpha, dropout, target_modules}): peft LoRA adapters train and the backbone stays
        frozen; `save` merges them into the weights, so the folder loads like any fine-tuned model."""
        super().__init__()
        from xdr.models.use_model import load_use

        self.model_name, self.pooling, self.normalize = model_name, pooling, normalize
        self.is_use = model_kind(model_name) in (ModelKind.USE, ModelKind.USE_FOLDER)
        self.model: Any
        self.tokenizer: Any  # USE's own tokenizer or a Hugging Face one: `is_use` says which
        if self.is_use:
            self.model, self.tokenizer = load_use(model_name)
        else:
            from transformers import AutoModel, AutoTokenizer

            self.model = AutoModel.from_pretrained(model_name)
            self.tokenizer = AutoTokenizer.from_pretrained(model_name)
            for name, param in self.model.named_parameters():
                if name.startswith("pooler."):  # BERT's pooler head is no part of CLS or mean pooling; a
                    param.requires_grad_(False)  # weight without gradient would stall DDP's reduction
        self.lora = lora
        if lora:
            self.model = with_lora(self.model, lora)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: list[str], max_tokens: int) -> torch.Tensor:
        if self.is_use:  # L2-normalised by construction
            ids, mask = self.tokenizer.pad(self.tokenizer.ids(texts, max_tokens))
            return self.model(ids.to(self.device), mask.to(self.device))
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        vectors = pool(self.model(**batch).last_hidden_state, batch["attention_mask"], self.pooling)
        return nn.functional.normalize(vectors, dim=-1) if self.normalize else vectors

    def forward(self, queries: list[str], passages: list[str], query_max_tokens: int,
                passage_max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides in one call: DistributedDataParallel syncs gradients for one forward per step."""
        return self.encode(queries, query_max_tokens), self.encode(passages, passage_max_tokens)

    def save(self, folder: str | Path) -> Path:
        """A folder that `encoder.model` accepts (USE: xdr_use.json + weights + sp.model; HF: save_pretrained)."""
        folder = Path(folder)
        model: Any = merged(self.model, self.lora)  # USE's module or a transformers model: both save_pretrained
        if self.is_use:
            return model.save_pretrained(folder)
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return folder

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self)
