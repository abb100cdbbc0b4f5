"""Benchmark stand-ins for the two models, so that the whole pipeline can run at corpus scale on CPUs.

They are NOT retrieval models. They keep everything around the models real (the same actors, part files,
batching, fusion, Parquet writes, index build and serving) while costing a few microseconds a passage,
so that the scale benchmark (benchmarks/bench_scale.py) measures the system, not a transformer on a CPU.

- `encoder.model: stand-in:hashing-<dim>`: whitespace words (the first `passage_max_tokens` /
  `query_max_tokens`) feature-hashed into `dim` signed buckets, L2-normalised. Texts that share words
  get close vectors, so search results are meaningful enough to check.
- `generator.model: stand-in:lead-words`: each query is the passage's first 8 words, for every language
  and query index asked for (the benchmark asks for 1 query in 1 language).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xdr.config import EncoderConfig, GeneratorConfig
from xdr.models.encoder import TextEncoder
from xdr.models.references import STAND_IN_PREFIX

PREFIX = STAND_IN_PREFIX
LEAD_WORDS = 8


class HashingEncoder(TextEncoder):
    """encode(texts, max_tokens) -> float32 [N, dim]: signed feature hashing of whitespace words."""

    def __init__(self, config: EncoderConfig):
        kind = config.model.removeprefix(PREFIX)
        name, _, dim = kind.partition("-")
        if name != "hashing" or not dim.isdigit() or int(dim) < 2:
            raise ValueError(f"encoder.model {config.model!r}: the stand-in encoder is 'stand-in:hashing-<dim>', "
                             "e.g. stand-in:hashing-64")
        self.config = config
        self._dim = int(dim)

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str], max_tokens: int) -> np.ndarray:
        n = len(texts)
        words = pc.list_slice(pc.utf8_split_whitespace(pa.array(texts, pa.string())), 0, max_tokens)
        lengths = pc.list_value_length(words).fill_null(0).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(words).dictionary_encode()
        # hash each distinct word once (Python's hash() is salted per process; crc32 is not)
        buckets = np.fromiter((zlib.crc32(w.encode()) for w in flat.dictionary.to_pylist()), dtype=np.int64,
                              count=len(flat.dictionary))
        token_bucket = buckets[flat.indices.to_numpy(zero_copy_only=False)]
        owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
        sign = np.where((token_bucket >> 31) & 1, -1.0, 1.0)
        out = np.bincount(owner * self._dim + token_bucket % self._dim, weights=sign,
                          minlength=n * self._dim).reshape(n, self._dim).astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class LeadWordsGenerator:
    """generate(passages) -> query rows whose text is the passage's first words."""

    def __init__(self, config: GeneratorConfig):
        if config.model != f"{PREFIX}lead-words":
            raise ValueError(f"generator.model {config.model!r}: the stand-in generator is 'stand-in:lead-words'")
        self.config = config

    def generate(self, passages: Sequence[dict]) -> list[dict]:
        cfg = self.config
        return [{"passage_id": p["id"], "lang": lang, "qidx": q, "text": " ".join(p["text"].split()[:LEAD_WORDS])}
                for p in passages for lang in cfg.languages for q in range(cfg.queries_per_language)]
