"""Training the query generator without Ray: examples and their rejects, the sampler, the teacher-forced loss
against a hand computation, gradient accumulation against one full batch, LoRA, and learning on a toy task."""

import json
import math

import numpy as np
import pytest
import torch

from xdr.io.storage import Storage
from xdr.models.generator import build_prompt
from xdr.train.data import ParallelItem, ParallelSet, Passage
from xdr.train.qg import (
    ExampleSampler,
    QGExample,
    TrainableGenerator,
    load_qg_jsonl,
    qg_examples,
    qg_train_step,
    qg_validation_loss,
)

TEMPLATE = "Generate a {language} question for this passage: {title} {text}"
KW = {"template": TEMPLATE, "max_input_tokens": 64, "max_target_tokens": 16}


def _set() -> ParallelSet:
    items = []
    for i in range(6):
        item = ParallelItem(f"q{i}", "g")
        for lang in ("en", "de", "ru"):
            item.question[lang] = f"{lang} question {i}"
            item.passage[lang] = Passage(f"T{i}", f"{lang} paragraph {i}")
        items.append(item)
    return ParallelSet(items, ("de", "en", "ru"))


def test_parallel_sets_pair_the_source_paragraph_with_every_other_languages_question():
    examples = qg_examples(_set(), "en")
    assert len(examples) == 12 and {e.lang for e in examples} == {"de", "ru"}
    assert all(e.passage.text.startswith("en paragraph") for e in examples)
    first = examples[0]
    assert first.question == f"{first.lang} question 0"
    assert first.prompt(TEMPLATE) == build_prompt("T0", "en paragraph 0", first.lang, TEMPLATE)
    assert "German" in qg_examples(_set(), "en", ["de"])[0].prompt(TEMPLATE)
    with pytest.raises(ValueError, match="passage_language 'fi'"):
        qg_examples(_set(), "fi")
    with pytest.raises(ValueError, match=r"\['ja'\]"):
        qg_examples(_set(), "en", ["ja"])


def test_bad_qg_rows_are_rejected_with_file_line_and_reason(tmp_path):
    path = tmp_path / "qg.jsonl"
    rows = ['{"text": "a passage", "question": "what?", "lang": "de", "title": "T"}',
            '{"passage": "another", "question": "wer?", "lang": "de"}',
            "not json", '{"text": "p", "lang": "de"}', '{"text": "p", "question": "q", "lang": "xx"}',
            '{"text": " ", "question": "q", "lang": "de"}', '{"text": "p", "question": "q", "lang": "de", "title": 3}',
            "[1, 2]"]
    path.write_text("\n".join(rows) + "\n")
    examples, rejects = load_qg_jsonl(Storage(), [str(path)])
    assert [e.passage for e in examples] == [Passage("T", "a passage"), Passage("", "another")]
    reasons = {r.line: r.reason for r in rejects}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8]
    assert "invalid JSON" in reasons[3] and reasons[4] == "missing question" and "unknown language" in reasons[5]
    assert reasons[6] == "missing text" and "title" in reasons[7] and "not a JSON object" in reasons[8]
    assert all(r.source == str(path) for r in rejects)


def test_the_sampler_sees_every_example_once_per_epoch_slices_ranks_and_resumes():
    examples = [QGExample(Passage("", f"p{i}"), "de", f"q{i}") for i in range(20)]
    whole = ExampleSampler(examples, batch_size=4, seed=3)
    epoch = [e.question for b in range(whole.batches_per_epoch) for e in whole.global_batch(0, b)]
    assert sorted(epoch) == sorted(e.question for e in examples)
    assert epoch != [e.question for e in examples]  # shuffled
    ranks = [ExampleSampler(examples, batch_size=4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].local_batch(0, 1) + ranks[1].local_batch(0, 1) == whole.global_batch(0, 1)
    run = iter(ExampleSampler(examples, batch_size=4, seed=3))
    straight = [next(run) for _ in range(8)]
    first = ExampleSampler(examples, batch_size=4, seed=3)
    batches = iter(first)
    [next(batches) for _ in range(3)]
    resumed = ExampleSampler(examples, batch_size=4, seed=3)
    resumed.load_state_dict(first.state_dict())
    batches = iter(resumed)
    assert [next(batches) for _ in range(5)] == straight[3:]
    with pytest.raises(ValueError, match="other data"):
        ExampleSampler(examples[:-4], batch_size=4, seed=3).load_state_dict(first.state_dict())


def _no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):  # attention dropout is a rate on the module
            module.dropout = 0.0
    return model


def test_the_loss_is_the_mean_token_cross_entropy_of_the_question_given_the_prompt(tiny_models):
    model = _no_dropout(TrainableGenerator(str(tiny_models["generator"]))).eval()
    examples = [QGExample(Passage("River", "The river flows into the sea."), "de", "Wohin fließt der Fluss?"),
                QGExample(Passage("", "Snow covers the mountain peak."), "ru", "Что покрывает вершину?")]
    with torch.no_grad():
        loss = float(model([e.prompt(TEMPLATE) for e in examples], [e.question for e in examples], 64, 16))
    # by hand: each question alone, decoder input = start token + question[:-1], -log p(next token)
    tok, net = model.tokenizer, model.model
    total, count = 0.0, 0
    for e in examples:
        source = tok(e.prompt(TEMPLATE), return_tensors="pt", truncation=True, max_length=64)
        target = tok(text_target=e.question, truncation=True, max_length=16)["input_ids"]
        decoder_in = torch.tensor([[net.config.decoder_start_token_id, *target[:-1]]])
        with torch.no_grad():
            logits = net(**source, decoder_input_ids=decoder_in).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        total -= sum(float(logp[i, t]) for i, t in enumerate(target))
        count += len(target)
    assert math.isclose(loss, total / count, rel_tol=1e-5)


def test_accumulated_micro_batches_give_the_full_batch_step(tiny_models):
    # questions of one length: the token mean of the batch equals the example-weighted mean of micro-batches
    examples = [QGExample(Passage("", f"paragraph number {i} about rivers"), "de", "Wo ist das?") for i in range(8)]
    weights = []
    for micro in (8, 2):
        torch.manual_seed(0)
        model = _no_dropout(TrainableGenerator(str(tiny_models["generator"])))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        loss = qg_train_step(model, optimizer, None, examples, micro_batch_size=micro, autocast_dtype=None,
                             max_grad_norm=None, **KW)
        weights.append((loss, [p.detach().clone() for p in model.parameters()]))
    assert math.isclose(weights[0][0], weights[1][0], rel_tol=1e-5)
    for a, b in zip(weights[0][1], weights[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_few_steps_learn_a_toy_question_pattern(tiny_models):
    """The question is the passage's first two words: the validation loss on held-out passages must fall."""
    words = ["river", "mountain", "city", "music", "bread", "ship", "star", "forest", "school", "train", "horse",
             "king", "coffee", "rain", "book", "fish"]
    examples = [QGExample(Passage("", f"{a} {b} and more text"), "de", f"{a} {b}?")
                for a in words for b in words[:6] if a != b]
    train, val = examples[:-16], [examples[-16:]]
    torch.manual_seed(0)
    model = TrainableGenerator(str(tiny_models["generator"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = qg_validation_loss(model, val, micro_batch_size=16, autocast_dtype=None, **KW)
    batches = iter(ExampleSampler(train, batch_size=16, seed=0))
    for _ in range(40):
        qg_train_step(model, optimizer, None, next(batches), micro_batch_size=8, autocast_dtype=None, **KW)
    after = qg_validation_loss(model, val, micro_batch_size=16, autocast_dtype=None, **KW)
    assert after < 0.6 * before, (before, after)


def test_lora_trains_only_adapters_and_the_merged_folder_generates_like_the_adapted_model(tiny_models, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    model = TrainableGenerator(str(tiny_models["generator"]), lora={"rank": 4, "alpha": 8, "dropout": 0.0})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    counts = model.parameter_counts()
    assert 0 < counts["trainable_parameters"] < 0.1 * counts["parameters"]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    examples = [QGExample(Passage("", f"text {i} river"), "de", f"frage {i}?") for i in range(8)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        qg_train_step(model, optimizer, None, examples, micro_batch_size=4, autocast_dtype=None, **KW)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    model.save(tmp_path / "merged")
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged").eval()
    model.eval()
    batch = model.tokenizer(["Generate a German question for this passage: text 3 river"], return_tensors="pt")
    start = torch.tensor([[reloaded.config.decoder_start_token_id]])
    with torch.no_grad():
        adapted = model.model(**batch, decoder_input_ids=start).logits
        merged = reloaded(**batch, decoder_input_ids=start).logits
        base = AutoModelForSeq2SeqLM.from_pretrained(tiny_models["generator"]).eval()(
            **batch, decoder_input_ids=start).logits
    np.testing.assert_allclose(merged.numpy(), adapted.numpy(), atol=1e-5)
    assert (merged - base).abs().max() > 1e-4, "the adapters changed nothing"
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"] == "mt5"


def test_retrieval_triplets_become_examples_and_those_without_a_known_query_language_are_rejected(tmp_path):
    from xdr.train.data import load_triplets
    from xdr.train.qg import qg_from_triplets

    path = tmp_path / "xor.jsonl"
    bach = {"title": "Bach", "text": "J. S. B."}
    rows = [{"query": "Wer war Bach?", "query_lang": "de", "positive_passages": [bach]},
            {"query": "who?", "positive_passages": [{"title": "", "text": "x"}]},
            {"query": "кто?", "query_lang": "qq", "positive_passages": [{"title": "", "text": "y"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    triplets, bad = load_triplets(Storage(), [str(path)])
    examples, rejects = qg_from_triplets(triplets, str(path))
    assert bad == [] and examples == [QGExample(Passage("Bach", "J. S. B."), "de", "Wer war Bach?")]
    assert [r.reason.split(" (")[0] for r in rejects] == ["triplet 2", "triplet 3"]
    assert all("query_lang" in r.reason for r in rejects) and "'who?'" in rejects[0].reason
