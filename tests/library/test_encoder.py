import numpy as np
import pytest
import torch

from xdr.config import EncoderConfig
from xdr.models.encoder import Encoder, passage_text, pool


def test_cls_and_mean_pooling_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]  # the padded position is ignored
    with pytest.raises(ValueError, match="unknown pooling 'max'; expected one of cls, mean"):
        pool(hidden, mask, "max")


def test_passage_text_is_title_space_text():
    assert passage_text("Helsinki", "is a city") == "Helsinki is a city"
    assert passage_text("", " is a city ") == "is a city"


TEXTS = ["Helsinki is the capital of Finland", "Seoul", "the longest river in Europe flows into the Caspian Sea",
         "Mount Fuji", "a", "Kimchi is a Korean side dish of fermented vegetables"]


def _reference(model_dir, texts, max_tokens, pooling):
    """One text at a time, no padding: an independent path to the same vectors."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, truncation=True, max_length=max_tokens, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            out.append(hidden[0] if pooling == "cls" else hidden.mean(0))
    return torch.stack(out).numpy()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_encode_matches_unbatched_reference_for_any_batch_size(tiny_models, pooling):
    reference = _reference(tiny_models["encoder"], TEXTS, 32, pooling)
    for batch_size in (1, 4, 64):
        enc = Encoder(EncoderConfig(model=str(tiny_models["encoder"]), pooling=pooling, batch_size=batch_size))
        np.testing.assert_allclose(enc.encode_queries(TEXTS), reference, rtol=1e-4, atol=1e-5)


def test_normalize_and_truncation(tiny_models):
    enc = Encoder(EncoderConfig(model=str(tiny_models["encoder"]), normalize=True, passage_max_tokens=4))
    vectors = enc.encode_passages(["T"] * 2, ["Helsinki is the capital of Finland", "Helsinki is the city"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # at 4 tokens ([CLS] T Helsinki is) the two passages are the same text
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-5)
