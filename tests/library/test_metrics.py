"""Metrics against values computed by hand, including ties and edge cases."""

import math

import numpy as np
import pytest

from xdr.eval.metrics import (
    average_precision,
    language_bias,
    paired_t_test,
    ranks_of,
    recall_at_tokens,
    trec_metrics,
    word_tokenize,
    xor_recall,
)


def test_word_tokenize_splits_sentences_and_keeps_known_abbreviations():
    assert word_tokenize("Mr. Smith went to Washington. He left.") == [
        "Mr.", "Smith", "went", "to", "Washington", ".", "He", "left", "."]
    assert word_tokenize('He said "hi" (twice).') == ["He", "said", "``", "hi", "''", "(", "twice", ")", "."]


def test_recall_at_tokens_cuts_at_exactly_n_tokens_and_is_case_sensitive():
    texts = ["The cat sat on the mat.", "Paris is big."]
    assert not recall_at_tokens(texts, ["mat"], 5)     # "The cat sat on the"
    assert recall_at_tokens(texts, ["mat"], 6)         # "The cat sat on the mat"
    assert not recall_at_tokens(texts, ["Mat"], 6)
    assert recall_at_tokens(texts, ["mat . Paris"], 8)  # tokens joined by single spaces across passages
    assert not recall_at_tokens(texts, ["Paris"], 6)   # the second passage is never reached


def test_xor_recall_drops_yes_no_and_macro_averages():
    per_language = {
        "fi": [(["Helsinki is the capital."], ["Helsinki"]), (["Nothing here."], ["Turku"]),
               (["Yes it is."], ["yes"])],              # yes/no only: skipped
        "ja": [(["Tokyo Tower"], ["Tokyo", "no"])],
    }
    scores = xor_recall(per_language, n_tokens=2000)
    assert scores == {"fi": 50.0, "ja": 100.0, "avg": 75.0}


def test_average_precision_by_hand():
    assert average_precision([1, 3]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert average_precision([3, 1]) == pytest.approx((1 / 1 + 2 / 3) / 2)  # order of the input is irrelevant
    assert average_precision([4]) == 0.25
    assert average_precision([1, 3], k=2) == pytest.approx((1 / 1) / 2)  # only rank 1 counts; min(|rel|, k) = 2
    assert average_precision([5, 6], k=2) == 0.0
    assert average_precision([2, 3, 9], k=10) == pytest.approx((1 / 2 + 2 / 3 + 3 / 9) / 3)
    with pytest.raises(ValueError):
        average_precision([])


def test_ranks_with_ties_follow_column_order():
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    assert ranks_of(scores, [[2, 0], [3, 1]]) == [[3, 2], [4, 2]]


def test_language_bias_is_mean_rank_spread():
    assert language_bias([[1, 5, 3], [2, 2]]) == 2.0
    assert language_bias([]) == 0.0


def test_trec_metrics_by_hand_including_ties_and_missing_queries():
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2, "d4": 1}, "q3": {"d9": 1}, "q4": {"d6": 1}}
    run = {"q1": {"d2": 2.0, "d1": 1.0},
           "q2": {"d4": 3.0, "d5": 2.0, "d3": 1.0},
           "q4": {"d6": 1.0, "d7": 1.0}}                 # a tie: trec_eval orders by doc id, descending
    aggregate, per_query = trec_metrics(run, qrels, ["nDCG@10", "RR@10", "R@100"])
    ndcg_q2 = (1 / math.log2(2) + 2 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    assert per_query["nDCG@10"]["q1"] == pytest.approx(1 / math.log2(3))
    assert per_query["nDCG@10"]["q2"] == pytest.approx(ndcg_q2)
    assert per_query["RR@10"] == {"q1": 0.5, "q2": 1.0, "q3": 0.0, "q4": 0.5}
    assert per_query["R@100"] == {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}
    assert aggregate["RR@10"] == pytest.approx(2.0 / 4)


def test_paired_t_test_against_the_closed_form_t_distribution_with_3_df():
    a, b = [1, 2, 3, 4], [2, 2, 4, 6]          # differences 1, 0, 1, 2: mean 1, sd sqrt(2/3)
    t = 1 / (math.sqrt(2 / 3) / 2)
    cdf = 0.5 + (t / (math.sqrt(3) * (1 + t * t / 3)) + math.atan(t / math.sqrt(3))) / math.pi  # Student t, 3 df
    result = paired_t_test(a, b, comparisons=7)
    assert result.t == pytest.approx(t) and result.p == pytest.approx(2 * (1 - cdf))
    assert result.p_bonferroni == pytest.approx(min(1, 7 * 2 * (1 - cdf)))
    assert result.n == 4 and result.mean_difference == 1.0
    assert paired_t_test([1, 2], [1, 2]).p == 1.0  # identical runs
    with pytest.raises(ValueError):
        paired_t_test([1], [2])


def test_edges_the_hand_computed_cases_leave_out():
    """Found by mutation testing (scripts/mutation.sh): each line fails on a changed boundary, default or
    fallback that the cases above pass."""
    assert average_precision([2], k=2) == 0.5  # a relevant item at rank k counts
    with pytest.raises(ValueError, match="at least one relevant item"):
        average_precision([])
    assert ranks_of(np.array([[0.5, 0.9]]), [[]]) == [[]]  # a question without relevant candidates
    # 2 of 3 hits in ar; only yes/no answers in te: no question left, 0 (not a division by zero)
    per_language = {"ar": [(["a b"], ["a"]), (["a b"], ["b"]), (["a b"], ["c"])], "te": [(["yes"], ["Yes"])]}
    assert xor_recall(per_language, n_tokens=10) == pytest.approx({"ar": 200 / 3, "te": 0.0, "avg": 100 / 3})
    assert xor_recall({}, n_tokens=10) == {"avg": 0.0}
    assert trec_metrics({}, {"q1": {"d1": 1}})[1]["RR@10"] == {"q1": 0.0}  # nothing retrieved at all
    assert trec_metrics({}, {})[0] == {"nDCG@10": 0.0, "R@100": 0.0, "RR@10": 0.0}


def test_paired_t_test_without_variance_and_its_bonferroni_defaults():
    same = paired_t_test([1, 2, 3], [1, 2, 3])
    assert (same.test, same.t, same.p, same.p_bonferroni) == ("paired two-sided t-test", 0.0, 1.0, None)
    better, worse = paired_t_test([1, 2, 3], [2, 3, 4]), paired_t_test([2, 3, 4], [1, 2, 3])
    assert (better.t, better.p, worse.t, worse.p) == (math.inf, 0.0, -math.inf, 0.0)  # every question +1 / -1
    a, b = [1, 2, 3, 4], [2, 2, 4, 6]
    p = paired_t_test(a, b).p
    assert paired_t_test(a, b, comparisons=1).p_bonferroni is None
    assert paired_t_test(a, b, comparisons=2).p_bonferroni == pytest.approx(2 * p)
    assert paired_t_test(a, b, comparisons=1000).p_bonferroni == 1.0
    with pytest.raises(ValueError, match="equal-length samples"):
        paired_t_test([1, 2], [1, 2, 3])
