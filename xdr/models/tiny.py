"""Tiny offline models for tests and the demo: a BERT-style encoder and an mT5-style generator.

Weights are random (seeded) and the tokenizers are trained on the fly with the `tokenizers` library,
so nothing is downloaded. They exercise every code path of the real models at a fraction of the cost;
their outputs carry no meaning. Real runs point the config at Hugging Face ids instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, MT5Config, MT5ForConditionalGeneration, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from xdr.languages import LANGUAGE_NAMES

SAMPLE_CORPUS = Path(__file__).parent.parent / "data" / "sample_corpus.jsonl"
ENCODER_DIR, GENERATOR_DIR = "tiny-encoder", "tiny-generator"


def tokenizer_training_text(texts: Iterable[str]) -> list[str]:
    prompt_words = [f"Generate a {name} question for this passage:" for name in LANGUAGE_NAMES.values()]
    return list(texts) + prompt_words


def _corpus_texts(corpus: Path) -> list[str]:
    texts = []
    for line in corpus.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            texts.append(f"{row.get('title') or ''} {row.get('text') or ''}")
    return texts


def build_encoder(out_dir: Path, texts: list[str], *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=hidden * 4, max_position_embeddings=512)
    BertModel(config).save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


def build_generator(out_dir: Path, texts: list[str], *, d_model: int = 64, layers: int = 2, seed: int = 0,
                    vocab_size: int = 2000) -> Path:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    tok.decoder = decoders.Metaspace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)
    torch.manual_seed(seed)
    config = MT5Config(vocab_size=tok.get_vocab_size(), d_model=d_model, d_kv=16, d_ff=d_model * 2,
                       num_layers=layers, num_decoder_layers=layers, num_heads=4, pad_token_id=0,
                       eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)
    model = MT5ForConditionalGeneration(config)
    with torch.no_grad():  # flatten the random logits so that sampling visibly varies
        model.lm_head.weight.mul_(0.02)
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


def build_tiny_models(out_dir: str | Path, corpus: Path = SAMPLE_CORPUS) -> dict[str, Path]:
    """Build both models under out_dir (skipped when already there). Returns their folders."""
    out = Path(out_dir)
    texts = tokenizer_training_text(_corpus_texts(corpus))
    paths = {"encoder": out / ENCODER_DIR, "generator": out / GENERATOR_DIR}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per tiny file saved is noise
    try:
        if not (paths["encoder"] / "config.json").exists():
            build_encoder(paths["encoder"], texts)
        if not (paths["generator"] / "config.json").exists():
            build_generator(paths["generator"], texts)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return paths
