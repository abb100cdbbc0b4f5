"""The published metrics, implemented to their stated semantics (docs/METHOD.md), and significance.

- R@Nkt (XOR-Retrieve): per question, the ranked passages' text is word-tokenised in rank order until at
  least N tokens are collected, cut to exactly N, joined with spaces; a hit is any answer (yes/no dropped)
  occurring as a case-sensitive substring. 100 * hits / questions per language, macro-averaged.
- LAReQA mAP (mono / cross / multi) and language bias, from the ranks of the relevant candidates.
- nDCG@10, Recall@100, MRR@10 through ir-measures' pytrec_eval provider (trec_eval semantics).
- Paired two-sided t-test over per-question scores (scipy), with optional Bonferroni correction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

YES_NO = ("yes", "no")

# NLTK's word_tokenize splits sentences with the pretrained English Punkt model (nltk_data/punkt), which no
# package on PyPI ships. We use Punkt with its default parameters plus the common English abbreviations
# below, then the same NLTKWordTokenizer. The remaining difference: an abbreviation outside this list can
# end a "sentence" here, which splits its period off as a separate token (one extra token).
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "u.s", "u.k",
                  "inc", "co", "corp", "ltd", "no", "vol", "fig", "jan", "feb", "mar", "apr", "jun", "jul",
                  "aug", "sep", "sept", "oct", "nov", "dec", "gen", "col", "lt", "sgt", "rev", "mt", "ft"}


def _tokenizers():
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(_ABBREVIATIONS)
    return PunktSentenceTokenizer(params), NLTKWordTokenizer()


_SENT, _WORD = None, None


def word_tokenize(text: str) -> list[str]:
    """NLTK's word_tokenize (sentence split, then NLTKWordTokenizer), offline."""
    global _SENT, _WORD
    if _SENT is None:
        _SENT, _WORD = _tokenizers()
    return [token for sentence in _SENT.tokenize(text) for token in _WORD.tokenize(sentence)]


def usable_answers(answers: Iterable[str]) -> list[str]:
    return [a for a in answers if a.strip().lower() not in YES_NO]


def recall_at_tokens(ranked_texts: Iterable[str], answers: Sequence[str], n_tokens: int) -> bool:
    """One question's R@Nkt hit. `answers` must already exclude yes/no (see usable_answers)."""
    tokens: list[str] = []
    for text in ranked_texts:
        tokens.extend(word_tokenize(text))
        if len(tokens) >= n_tokens:
            break
    window = " ".join(tokens[:n_tokens])
    return any(answer in window for answer in answers)


def xor_recall(per_language: dict[str, list[tuple[list[str], Sequence[str]]]], n_tokens: int) -> dict[str, float]:
    """{lang: [(ranked passage texts, answers), ...]} -> {lang: 100*hits/questions, ..., "avg": macro}.
    Questions with no answer left after dropping yes/no are skipped."""
    scores = {}
    for lang, questions in sorted(per_language.items()):
        hits = [recall_at_tokens(texts, usable, n_tokens) for texts, answers in questions
                if (usable := usable_answers(answers))]
        scores[lang] = 100.0 * sum(hits) / len(hits) if hits else 0.0
    scores["avg"] = float(np.mean([scores[lang] for lang in sorted(per_language)])) if per_language else 0.0
    return scores


def average_precision(relevant_ranks: Sequence[int], k: int | None = None) -> float:
    """AP from the 1-based ranks of a question's relevant items:
    sum over relevant ranks i of (relevant items in the top i) / i, divided by the number of relevant items
    (truncated at k: only ranks <= k count, divided by min(|rel|, k))."""
    n_relevant = len(relevant_ranks)
    if n_relevant == 0:
        raise ValueError("average_precision needs at least one relevant item")
    ranks = sorted(relevant_ranks)
    if k is not None:
        ranks = [r for r in ranks if r <= k]
        n_relevant = min(n_relevant, k)
    return sum((j + 1) / r for j, r in enumerate(ranks)) / n_relevant


def ranks_of(scores: np.ndarray, relevant_columns: Sequence[Sequence[int]]) -> list[list[int]]:
    """1-based ranks of given columns in each row of scores [Q, C], ranking by score descending and, for
    equal scores, by column index (a stable sort)."""
    out = []
    for row, columns in zip(scores, relevant_columns):
        cols = np.asarray(columns, dtype=np.int64)
        values = row[cols]
        higher = (row[None, :] > values[:, None]).sum(axis=1)
        tied_before = ((row[None, :] == values[:, None]) & (np.arange(len(row))[None, :] < cols[:, None])).sum(axis=1)
        out.append((1 + higher + tied_before).tolist())
    return out


def language_bias(relevant_ranks: Sequence[Sequence[int]]) -> float:
    """Mean over questions of (highest rank - lowest rank) among its relevant candidates."""
    return float(np.mean([max(r) - min(r) for r in relevant_ranks])) if relevant_ranks else 0.0


def trec_metrics(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]],
                 measures: Sequence[str] = ("nDCG@10", "R@100", "RR@10")) -> tuple[dict, dict]:
    """(aggregate {measure: value}, per query {measure: {qid: value}}) with trec_eval semantics, through
    ir-measures. Queries with judgements but no run entry count as 0 (as trec_eval's -c)."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    qrels_list = [ir_measures.Qrel(q, d, r) for q, docs in qrels.items() for d, r in docs.items()]
    run_list = [ir_measures.ScoredDoc(q, d, float(s)) for q, docs in run.items() for d, s in docs.items()]
    per_query: dict[str, dict[str, float]] = {str(m): {q: 0.0 for q in qrels} for m in parsed}
    # pytrec_eval explicitly: ir-measures' default provider for some measures orders tied scores differently
    # from trec_eval (which breaks ties by doc id, descending).
    for metric in ir_measures.pytrec_eval.iter_calc(parsed, qrels_list, run_list):
        per_query[str(metric.measure)][metric.query_id] = float(metric.value)
    aggregate = {name: float(np.mean(list(values.values()))) if values else 0.0
                 for name, values in per_query.items()}
    return aggregate, per_query


@dataclass(frozen=True)
class TTest:
    test: str
    n: int
    mean_difference: float
    t: float
    p: float
    p_bonferroni: float | None = None


def paired_t_test(before: Sequence[float] | np.ndarray, after: Sequence[float] | np.ndarray, *,
                  comparisons: int = 1) -> TTest:
    """Two-sided paired t-test of `after` against `before` over the same questions; Bonferroni over
    `comparisons`."""
    from scipy import stats

    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"paired t-test needs two equal-length samples of >= 2 scores, got {a.shape}, {b.shape}")
    diff = b - a
    if np.allclose(diff, diff[0]):  # no variance: t is undefined (0/0) or infinite
        t, p = (0.0, 1.0) if diff[0] == 0 else (float(np.sign(diff[0]) * np.inf), 0.0)
    else:
        result = stats.ttest_rel(b, a)
        t, p = float(result.statistic), float(result.pvalue)
    return TTest("paired two-sided t-test", int(a.size), float(diff.mean()), t, p,
                 min(1.0, p * comparisons) if comparisons > 1 else None)
