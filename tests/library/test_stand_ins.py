"""The benchmark stand-ins for the models: the hashing encoder against vectors computed by hand."""

import zlib

import numpy as np
import pytest

from xdr.config import EncoderConfig, GeneratorConfig
from xdr.models.encoder import make_encoder
from xdr.models.stand_ins import HashingEncoder, LeadWordsGenerator


def _by_hand(words, dim):
    vector = np.zeros(dim)
    for word in words:
        h = zlib.crc32(word.encode())
        vector[h % dim] += -1.0 if (h >> 31) & 1 else 1.0
    return vector / np.linalg.norm(vector)


def test_hashing_encoder_equals_feature_hashing_by_hand():
    encoder = make_encoder(EncoderConfig(model="stand-in:hashing-16", passage_max_tokens=5, query_max_tokens=3))
    assert isinstance(encoder, HashingEncoder) and encoder.dim == 16
    texts = ["río  Ärger δέλτα\tstraße", "a b c d e f g", "one"]
    got = encoder.encode_queries(texts)
    for text, vector in zip(texts, got):
        np.testing.assert_allclose(vector, _by_hand(text.split()[:3], 16), rtol=1e-6)
    passages = encoder.encode_passages(["Title", ""], ["a b c d e f", "x y"])
    np.testing.assert_allclose(passages[0], _by_hand(["Title", "a", "b", "c", "d"], 16), rtol=1e-6)
    np.testing.assert_allclose(passages[1], _by_hand(["x", "y"], 16), rtol=1e-6)


def test_stand_ins_refuse_unknown_names():
    with pytest.raises(ValueError, match="stand-in:hashing-<dim>"):
        HashingEncoder(EncoderConfig(model="stand-in:hashing"))
    with pytest.raises(ValueError, match="stand-in:lead-words"):
        LeadWordsGenerator(GeneratorConfig(model="stand-in:other"))


def test_lead_words_generator_writes_the_first_words_for_each_language_and_index():
    generator = LeadWordsGenerator(GeneratorConfig(model="stand-in:lead-words", languages=["fi", "te"],
                                                   queries_per_language=2))
    rows = generator.generate([{"id": "p1", "title": "", "text": "one two three four five six seven eight nine"}])
    assert rows == [{"passage_id": "p1", "lang": lang, "qidx": q, "text": "one two three four five six seven eight"}
                    for lang in ("fi", "te") for q in range(2)]
