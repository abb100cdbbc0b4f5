"""Checks that need a CUDA GPU (skipped elsewhere): the stages in bfloat16 against float32, and faiss's GPU
path against its CPU path."""

import numpy as np
import pytest
import torch

from xdr.config import EncoderConfig, GeneratorConfig
from xdr.index import build as xindex
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


@pytest.mark.skipif(not torch.cuda.is_available() or xindex.faiss_gpus() == 0, reason="needs faiss with GPUs")
def test_the_faiss_gpu_path_assigns_the_lists_the_cpu_assigns(tmp_path):
    """The build job's use_gpu path: lists assigned on the GPU (add_assigned with a GPU copy of the quantizer)
    equal the CPU's, but for near-ties (a vector all but equidistant from two centroids, where the GPU's
    float sums may tip it the other way)."""
    import faiss

    from xdr.ingest.synthetic import clustered_vectors

    vectors = clustered_vectors(20_000, 64, clusters=64, seed=3)
    trained = xindex.train_index("IVF64,Flat", vectors, seed=0, use_gpu=False)
    quantizer = faiss.extract_index_ivf(trained).quantizer
    on_cpu = quantizer.search(vectors, 1)
    on_gpu = faiss.index_cpu_to_all_gpus(quantizer).search(vectors, 1)
    differ = np.flatnonzero(on_cpu[1][:, 0] != on_gpu[1][:, 0])
    near_ties = np.abs(on_cpu[0][differ, 0] - on_gpu[0][differ, 0]) < 1e-4
    assert len(differ) < 0.001 * len(vectors) and near_ties.all(), (len(differ), on_cpu[0][differ][:5])

    index = xindex.from_bytes(xindex.to_bytes(trained))
    xindex.add_assigned(index, vectors, np.arange(len(vectors), dtype=np.int64), faiss.index_cpu_to_all_gpus(quantizer))
    invlists = faiss.extract_index_ivf(index).invlists
    sizes = np.array([invlists.list_size(i) for i in range(64)])
    assert sizes.sum() == len(vectors)
    assert np.abs(sizes - np.bincount(on_cpu[1][:, 0], minlength=64)).sum() <= 2 * len(differ)
