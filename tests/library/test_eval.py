"""Evaluation data sets (real files from ../shared/data) and drivers on hand-made data."""

import json

import numpy as np
import pytest

from tests.support.paths import SHARED_DATA
from xdr.eval import datasets, experiments
from xdr.eval.metrics import average_precision

needs_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside the repository")


@needs_data
def test_xquad_r_counts_match_the_published_data_set():
    data = datasets.load_lareqa(SHARED_DATA / "xquad-r")
    assert len(data.candidates) == 13_014
    assert data.languages == list(datasets.XQUAD_R_LANGUAGES)
    assert {len(q) for q in data.questions.values()} == {1190}
    assert {len(r) for r in data.relevant.values()} == {11}  # one answer sentence in each language
    raw = json.loads((SHARED_DATA / "xquad-r" / "en.json").read_text())["data"]
    paragraphs = [p for article in raw for p in article["paragraphs"]]
    for question in data.questions["de"][:50]:
        (row,) = [r for r in data.relevant[("de", question.qid)] if data.candidates[r].lang == "en"]
        candidate = data.candidates[row]
        para = paragraphs[candidate.paragraph]
        sentence = para["sentences"][candidate.sentence]
        assert candidate.text == f"{sentence} {para['context']}"
        en_answer = next(qa for qa in para["qas"] if qa["id"] == question.qid)["answers"][0]["text"]
        assert en_answer in sentence


@needs_data
def test_miracl_yo_and_xquad_counts():
    miracl = datasets.load_miracl_yo(SHARED_DATA / "miracl-yo")
    assert (len(miracl.corpus), len(miracl.topics), sum(len(v) for v in miracl.qrels.values())) == (49_043, 119, 1_188)
    xquad = datasets.load_xquad(SHARED_DATA / "xquad")
    assert {len(p) for p in xquad.paragraphs.values()} == {240}
    assert {len(q) for q in xquad.questions.values()} == {1190}
    assert [q.qid for q in xquad.questions["en"]] == [q.qid for q in xquad.questions["th"]]


def _lareqa_folder(tmp_path):
    """Two languages, two paragraphs of two sentences; q1 is answered by sentence 1 of paragraph 0."""
    def para(s1, s2, q, answer_start):
        return {"context": f"{s1} {s2}", "sentences": [s1, s2],
                "sentence_breaks": [[0, len(s1)], [len(s1) + 1, len(s1) + 1 + len(s2)]],
                "qas": [{"id": q, "question": f"question {q}",
                         "answers": [{"text": "x", "answer_start": answer_start}]}]}
    for lang in ("en", "xx"):
        doc = {"data": [{"title": "t", "paragraphs": [para(f"{lang} a0.", f"{lang} a1.", "q1", 8),
                                                       para(f"{lang} b0.", f"{lang} b1.", "q2", 0)]}]}
        (tmp_path / f"{lang}.json").write_text(json.dumps(doc))
    return tmp_path


class _TableEncoder:
    """Fixed vectors per text: the test decides every score, so the expected mAP follows by hand."""

    def __init__(self, table):
        self.table = table

    def encode_passages(self, titles, texts):
        return np.array([self.table[t.split(" ")[0] + " " + t.split(" ")[1]] for t in texts], dtype=np.float32)

    def encode_queries(self, texts):
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_lareqa_relevance_and_map_by_hand(tmp_path):
    data = datasets.load_lareqa(_lareqa_folder(tmp_path))
    # candidates: en a0, en a1, en b0, en b1, xx a0, xx a1, xx b0, xx b1
    assert [c.text.split(" ")[1] for c in data.candidates] == ["a0.", "a1.", "b0.", "b1."] * 2
    assert data.relevant[("en", "q1")] == {1, 5} and data.relevant[("xx", "q2")] == {2, 6}
    e = np.eye(8)
    table = {f"{lang} {s}.": e[i] * (1 + (lang == "en")) for i, (lang, s) in enumerate(
        (lang, s) for lang in ("en", "xx") for s in ("a0", "a1", "b0", "b1"))}
    # q1 (both languages) scores: en a1 = 2*0.9, xx a1 = 0.1, en b0 = 2*0.5  -> en a1 first, en b0 second, xx a1 third
    q1 = 0.9 * e[1] + 0.1 * e[5] + 0.5 * e[2]
    q2 = 1.0 * e[6] + 0.3 * e[2]        # xx b0 = 1.0, en b0 = 2*0.3 = 0.6: both relevant, ranks 1 and 2
    table.update({"question q1": q1, "question q2": q2})
    result = experiments.lareqa_evaluate(data, _TableEncoder(table))
    # multi: q1 relevant ranks {1, 3}, q2 relevant ranks {1, 2}
    assert result["multi"]["en"] == pytest.approx((average_precision([1, 3]) + 1.0) / 2)
    assert result["language_bias"]["en"] == pytest.approx((2 + 1) / 2)
    # mono en: q1 -> en a1 rank 1; q2 -> en b0 rank 1 (only en candidates)
    assert result["mono"]["en"] == 1.0
    # cross en->xx: q1 -> xx a1 is the only xx candidate with a score (0.1): rank 1; q2 -> xx b0 rank 1
    assert result["cross"]["en"] == 1.0 and result["cross"]["pairs"] == 2


def test_xor_evaluate_in_process(tiny_models):
    from xdr.config import EncoderConfig
    from xdr.models.encoder import make_encoder

    passages = {"p1": ("Helsinki", "Helsinki is the capital of Finland."), "p2": ("Nile", "The Nile is long.")}
    questions = [datasets.Question("1", "fi", "Mikä on Suomen pääkaupunki?", answers=("Helsinki",)),
                 datasets.Question("2", "ja", "ナイル川?", answers=("yes",))]
    result = experiments.xor_evaluate(questions, passages, make_encoder(EncoderConfig(model=str(
        tiny_models["encoder"]))), depth=2)
    # 2 passages hold fewer than 2,000 tokens, so every answer in them is found; yes/no questions are skipped
    assert result["R@2kt"] == {"fi": 100.0, "ja": 0.0, "avg": 50.0}


def test_xdr_evaluate_xor_writes_json_and_markdown(tiny_models, tmp_path):
    from ray_jobs.evaluate import main

    (tmp_path / "psgs.tsv").write_text("id\ttext\ttitle\n1\tHelsinki is the capital of Finland.\tHelsinki\n"
                                       "2\tThe Nile is a river.\tNile\n")
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "a", "question": "Suomen pääkaupunki?",
                                                  "answers": ["Helsinki"], "lang": "fi"}) + "\n")
    main(["xor", "--questions", str(tmp_path / "q.jsonl"), "--corpus", str(tmp_path / "psgs.tsv"),
          "--encoder", str(tiny_models["encoder"]), "--depth", "2", "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    # depth 2 holds the whole corpus (< 2,000 tokens), so the answer is found whatever the ranking
    assert result["R@2kt"] == {"fi": 100.0, "avg": 100.0} and result["questions"] == 1
    assert "| fi |" in (tmp_path / "out" / "result.md").read_text()
