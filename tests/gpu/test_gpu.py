"""Checks that need a CUDA GPU (skipped elsewhere): the stages in bfloat16 against float32."""

import numpy as np
import pytest
import torch

from xdr.config import EncoderConfig, GeneratorConfig
from xdr.models.encoder import Encoder
from xdr.models.generator import QueryGenerator

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TEXTS = ["Helsinki is the capital of Finland", "Seoul lies on the Han River", "Kimchi"] * 20


def test_bfloat16_encoder_matches_float32_within_dtype_tolerance(tiny_models):
    fast = Encoder(EncoderConfig(model=str(tiny_models["encoder"])), device="cuda")
    reference = Encoder(EncoderConfig(model=str(tiny_models["encoder"]), dtype="float32"), device="cpu")
    assert fast.dtype == torch.bfloat16
    got, want = fast.encode_queries(TEXTS), reference.encode_queries(TEXTS)
    rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    assert rel.max() < 0.05  # bfloat16 keeps 8 bits of mantissa


def test_generator_on_gpu_returns_every_query(tiny_models):
    gen = QueryGenerator(GeneratorConfig(model=str(tiny_models["generator"]), languages=["ar", "te"],
                                         queries_per_language=3, max_new_tokens=8), device="cuda")
    rows = gen.generate([{"id": f"p{i}", "title": "", "text": t} for i, t in enumerate(TEXTS[:5])])
    assert len(rows) == 5 * 2 * 3 and all(isinstance(r["text"], str) for r in rows)
