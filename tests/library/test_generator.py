import numpy as np
import pytest
import torch

from xdr.config import GeneratorConfig
from xdr.models.generator import KeyedTopKSampler, QueryGenerator, build_prompt, hashed_uniform, sequence_key


def test_prompt_is_the_papers_with_full_language_name_and_no_newlines():
    prompt = build_prompt("Helsinki", "Helsinki is the capital\nof Finland.", "fi")
    assert prompt == "Generate a Finnish question for this passage: Helsinki Helsinki is the capital of Finland."
    assert build_prompt("", "x", "te") == "Generate a Telugu question for this passage: x"


def test_prompt_rejects_unknown_language():
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        build_prompt("t", "x", "xx")


def test_sequence_keys_depend_on_every_part_of_the_identity():
    base = sequence_key(0, "p1", "ar", 0)
    assert base == sequence_key(0, "p1", "ar", 0)
    others = {sequence_key(1, "p1", "ar", 0), sequence_key(0, "p2", "ar", 0),
              sequence_key(0, "p1", "fi", 0), sequence_key(0, "p1", "ar", 1)}
    assert base not in others and len(others) == 4
    assert 0 <= base < 2**31


def test_hashed_uniform_is_uniform_and_a_function_of_key_step_column():
    keys = torch.arange(20_000, dtype=torch.int64) * 7919
    u = hashed_uniform(keys, step=3, width=4)
    assert u.shape == (20_000, 4) and float(u.min()) > 0 and float(u.max()) < 1
    assert torch.equal(u, hashed_uniform(keys, step=3, width=4))
    assert not torch.equal(u, hashed_uniform(keys, step=4, width=4))
    # mean 1/2 and variance 1/12 of Uniform(0,1), within 4 standard errors
    assert abs(float(u.mean()) - 0.5) < 4 * (1 / 12) ** 0.5 / (u.numel() ** 0.5)
    assert abs(float(u.var()) - 1 / 12) < 0.002


def test_sampler_draws_from_the_top_k_softmax():
    """Two candidates with probabilities .8 / .2 among the top 2; the rest never drawn."""
    n = 8000
    scores = torch.full((n, 6), -5.0)
    scores[:, 2], scores[:, 4] = float(np.log(0.8)), float(np.log(0.2))
    sampler = KeyedTopKSampler(top_k=2, temperature=1.0)
    sampler.row_keys = torch.arange(n, dtype=torch.int64) * 104729 % (2**31)
    out = sampler(torch.zeros((n, 5), dtype=torch.long), scores.clone())
    chosen = out.argmax(dim=-1)
    assert set(chosen.tolist()) <= {2, 4}
    assert torch.isinf(out).sum() == n * 5  # exactly one finite score per row
    share = float((chosen == 2).float().mean())
    assert abs(share - 0.8) < 4 * (0.8 * 0.2 / n) ** 0.5


def test_sampler_never_emits_banned_tokens():
    scores = torch.zeros((100, 5))
    scores[:, 0] = 10.0  # padding is by far the likeliest
    sampler = KeyedTopKSampler(top_k=3, temperature=1.0, banned_token_ids=[0])
    sampler.row_keys = torch.arange(100, dtype=torch.int64)
    assert 0 not in sampler(torch.zeros((100, 2), dtype=torch.long), scores).argmax(-1).tolist()


PASSAGES = [{"id": f"p{i}", "title": f"T{i}", "text": "Helsinki is the capital of Finland. " * (1 + i % 4)}
            for i in range(9)]


@pytest.fixture(scope="module")
def generator(tiny_models):
    return QueryGenerator(GeneratorConfig(model=str(tiny_models["generator"]), languages=["ar", "ja"],
                                          queries_per_language=3, max_new_tokens=10, batch_size=4))


def test_generate_returns_n_queries_per_language_in_order(generator):
    rows = generator.generate(PASSAGES[:2])
    assert [(r["passage_id"], r["lang"], r["qidx"]) for r in rows] == [
        (p, lang, q) for p in ("p0", "p1") for lang in ("ar", "ja") for q in range(3)]
    assert all(isinstance(r["text"], str) for r in rows)
    # sampling: the three queries of one (passage, language) are not all the same
    assert len({r["text"] for r in rows[:3]}) > 1


def test_queries_do_not_depend_on_batching_order_or_grouping(generator):
    reference = {(r["passage_id"], r["lang"], r["qidx"]): r["text"] for r in generator.generate(PASSAGES)}
    for batch_size in (1, 3, 64):
        generator.config = generator.config.model_copy(update={"batch_size": batch_size})
        reordered = generator.generate(PASSAGES[::-1])
        split = generator.generate(PASSAGES[:4]) + generator.generate(PASSAGES[4:])
        for rows in (reordered, split):
            assert {(r["passage_id"], r["lang"], r["qidx"]): r["text"] for r in rows} == reference


def test_seed_changes_the_queries(generator):
    first = generator.generate(PASSAGES[:2])
    generator.config = generator.config.model_copy(update={"seed": 99})
    second = generator.generate(PASSAGES[:2])
    generator.config = generator.config.model_copy(update={"seed": 0})
    assert [r["text"] for r in first] != [r["text"] for r in second]
