"""LoRA adapters (peft) for the trainable models, and their parameter counts."""

from __future__ import annotations

import copy

from torch import nn


def with_lora(model: nn.Module, lora: dict) -> nn.Module:
    """`model` with LoRA adapters ({rank, alpha, dropout, target_modules}; none = every linear layer) and its
    own weights frozen. A BERT-style pooler is left out: it is no part of the pooled vector, so an adapter
    there would get no gradient (and stall DDP's reduction)."""
    from peft import LoraConfig, get_peft_model

    pooler = any(".pooler" in f".{n}" for n, _ in model.named_modules())
    return get_peft_model(model, LoraConfig(
        r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=lora.get("target_modules") or "all-linear", exclude_modules=r".*pooler.*" if pooler else None))


def merged(model: nn.Module, lora: dict | None) -> nn.Module:
    """The model to save: a LoRA model's adapters merged into a copy of its weights, so the folder loads like
    any fine-tuned model; a fully fine-tuned model as it is."""
    return copy.deepcopy(model).merge_and_unload() if lora else model  # type: ignore[operator]  # a peft model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
