"""xQG query generation: a seq2seq model writes n questions per passage in each target language.

Sampling is top-k, but the random draw of every generated sequence is keyed by
(seed, passage id, language, query index) through a counter-based hash, never by a global RNG.
So a passage's queries do not depend on batch size, batch composition, order or worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig, LogitsProcessor, LogitsProcessorList

from xdr.config import GeneratorConfig
from xdr.languages import language_name
from xdr.models.batching import chunks, length_sorted_batches, pad_batch, prefetch
from xdr.models.devices import pick_device, pick_dtype
from xdr.models.references import ModelKind, model_kind

_MASK31 = (1 << 31) - 1
TOKENIZE_CHUNK = 4096  # prompts tokenised ahead of the device at a time


def build_prompt(title: str, text: str, lang: str, template: str = GeneratorConfig().prompt_template) -> str:
    """The paper's prompt; newlines in the passage become spaces."""
    prompt = template.format(language=language_name(lang), title=title.strip(), text=text.strip())
    return " ".join(prompt.replace("\r", " ").replace("\n", " ").split())


def sequence_key(seed: int, passage_id: str, lang: str, qidx: int) -> int:
    """A 31-bit key that alone decides the random draws of one generated query."""
    digest = hashlib.blake2b(f"{seed}\x1f{passage_id}\x1f{lang}\x1f{qidx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK31


def hashed_uniform(keys: torch.Tensor, step: int, width: int) -> torch.Tensor:
    """Uniform(0, 1) numbers [len(keys), width], a pure function of (key, step, column).

    A 31-bit integer hash (xor-shift-multiply rounds) evaluated in int64, so products never overflow.
    """
    cols = torch.arange(width, device=keys.device, dtype=torch.int64)
    x = (keys[:, None] * 0x2C1B3C6D + step * 0x297A2D39 + cols[None, :] * 0x165667B1 + 0x27D4EB2F) & _MASK31
    for _ in range(3):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK31
    x = (x >> 16) ^ x
    return (x.to(torch.float64) + 0.5) / float(1 << 31)


class KeyedTopKSampler(LogitsProcessor):
    """Chooses each next token by Gumbel-max over the top-k logits with keyed noise.

    It returns scores that are -inf everywhere but the chosen token, so the sampling step of
    `generate` can only pick that token. `row_keys` must hold one key per expanded row.
    """

    def __init__(self, top_k: int, temperature: float, banned_token_ids: Sequence[int] = ()):
        self.top_k = top_k
        self.temperature = temperature
        self.banned = sorted(set(banned_token_ids))  # padding is never a generated token
        self.row_keys: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        assert self.row_keys is not None and len(self.row_keys) == scores.shape[0]
        logits = scores.float()
        if self.banned:
            logits[:, self.banned] = float("-inf")
        top_values, top_ids = logits.topk(min(self.top_k, scores.shape[-1]), dim=-1)
        gumbel = -torch.log(-torch.log(hashed_uniform(self.row_keys, input_ids.shape[1], top_ids.shape[1])))
        pick = (top_values.double() / self.temperature + gumbel).argmax(dim=-1, keepdim=True)
        chosen = top_ids.gather(1, pick)
        out = torch.full_like(logits, float("-inf"))
        return out.scatter_(1, chosen, 0.0)  # type: ignore[return-value]  # a float tensor, as the interface says


class QueryGenerator:
    """Generates `queries_per_language` queries per passage and language with a HF seq2seq model."""

    def __init__(self, config: GeneratorConfig, device: str | None = None, *, model=None, tokenizer=None):
        """Loads `config.model`, unless a model and tokenizer already in memory are given (benchmarks)."""
        self.config = config
        self.device = pick_device(device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.model, revision=config.revision)
        self.model = model or AutoModelForSeq2SeqLM.from_pretrained(config.model, revision=config.revision,
                                                                    dtype=self.dtype)
        self.model.to(device=self.device, dtype=self.dtype).eval()
        model_gen = self.model.generation_config
        pad_id = model_gen.pad_token_id if model_gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self.sampler = KeyedTopKSampler(config.top_k, config.temperature, banned_token_ids=[pad_id])
        # Our sampler decides every token; the built-in warpers are switched off.
        self.generation_config = GenerationConfig(
            do_sample=True, top_k=0, top_p=1.0, temperature=1.0, num_beams=1,
            num_return_sequences=config.queries_per_language, max_new_tokens=config.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=model_gen.eos_token_id if model_gen.eos_token_id is not None else self.tokenizer.eos_token_id,
            decoder_start_token_id=model_gen.decoder_start_token_id,
        )

    def _tokenize(self, prompts: list[str]) -> list[list[int]]:
        return self.tokenizer(prompts, truncation=True, max_length=self.config.max_input_tokens)["input_ids"]

    @torch.inference_mode()
    def _generate_batch(self, token_ids: Sequence[Sequence[int]], keys: Sequence[Sequence[int]]) -> list[list[str]]:
        input_ids, mask = pad_batch(token_ids, self.tokenizer.pad_token_id)
        self.sampler.row_keys = torch.as_tensor(np.asarray(keys).reshape(-1), device=self.device)
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
            generation_config=self.generation_config, logits_processor=LogitsProcessorList([self.sampler]),
        )
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        n = self.config.queries_per_language
        return [texts[i * n: (i + 1) * n] for i in range(len(token_ids))]

    def generate_ids(self, token_ids: Sequence[Sequence[int]], keys: Sequence[Sequence[int]]) -> list[list[str]]:
        """Tokenised prompts and their sequence keys (one per query) -> the queries of each prompt, generated
        in length-sorted batches of `batch_size` prompts."""
        out: list[list[str]] = [[] for _ in token_ids]
        for batch in length_sorted_batches([len(t) for t in token_ids], self.config.batch_size):
            for i, texts in zip(batch, self._generate_batch([token_ids[i] for i in batch], [keys[i] for i in batch])):
                out[i] = texts
        return out

    def generate(self, passages: Sequence[dict]) -> list[dict]:
        """passages: dicts with id, title, text. Returns query rows (passage_id, lang, qidx, text)
        ordered by passage, then language (config order), then qidx."""
        cfg = self.config
        pairs = [(p, lang) for p in passages for lang in cfg.languages]
        results: list[list[str]] = [[] for _ in pairs]

        def tokenized_chunks():
            for span in chunks(len(pairs), TOKENIZE_CHUNK):
                prompts = [build_prompt(pairs[i][0]["title"], pairs[i][0]["text"], pairs[i][1], cfg.prompt_template)
                           for i in span]
                yield span, self._tokenize(prompts)

        for span, token_ids in prefetch(tokenized_chunks()):
            keys = [[sequence_key(cfg.seed, pairs[i][0]["id"], pairs[i][1], q) for q in range(cfg.queries_per_language)]
                    for i in span]
            results[span.start: span.stop] = self.generate_ids(token_ids, keys)
        return [
            {"passage_id": passage["id"], "lang": lang, "qidx": qidx, "text": text}
            for (passage, lang), texts in zip(pairs, results)
            for qidx, text in enumerate(texts)
        ]


def make_generator(config: GeneratorConfig, device: str | None = None, storage=None):
    """The generator `config.model` names: a benchmark stand-in, or the seq2seq model (a Hub id, a local
    folder, or an s3:// folder copied to the local model cache first; `storage` reaches it)."""
    from xdr.models.files import local_model
    from xdr.models.stand_ins import LeadWordsGenerator

    if model_kind(config.model) is ModelKind.STAND_IN:
        return LeadWordsGenerator(config)
    model = local_model(config.model, storage, revision=config.revision)
    return QueryGenerator(config.model_copy(update={"model": model}), device=device)
