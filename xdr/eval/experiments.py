"""Experiment drivers: encode a data set with the indexing job's own stage classes, search exactly,
score. Small data sets run in-process; a large corpus comes from an indexing run (`run_uri`)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from xdr.eval.datasets import BeirDataset, LareqaDataset, XquadDataset
from xdr.eval.metrics import average_precision, language_bias, paired_t_test, ranks_of, trec_metrics
from xdr.models.encoder import TextEncoder
from xdr.pipeline.fusion import fuse


def lareqa_evaluate(data: LareqaDataset, encoder: TextEncoder, *, k: int | None = None) -> dict:
    """mAP in the mono, cross and multi settings and the language bias, per language and averaged."""
    cand_emb = encoder.encode_passages([""] * len(data.candidates), [c.text for c in data.candidates])
    cand_lang = np.array([c.lang for c in data.candidates])
    columns_of = {lang: np.flatnonzero(cand_lang == lang).tolist() for lang in data.languages}
    mono, cross, multi, bias = {}, {}, {}, {}
    for x in data.languages:
        questions = data.questions[x]
        q_emb = encoder.encode_queries([q.text for q in questions])
        relevant = [sorted(data.relevant[(x, q.qid)]) for q in questions]
        # multi: against every candidate
        all_scores = q_emb @ cand_emb.T
        multi_ranks = ranks_of(all_scores, relevant)
        multi[x] = float(np.mean([average_precision(r, k) for r in multi_ranks]))
        bias[x] = language_bias(multi_ranks)
        for y in data.languages:
            cols = columns_of[y]
            position = {c: i for i, c in enumerate(cols)}
            rel_y = [[position[c] for c in rel if c in position] for rel in relevant]
            keep = [i for i, r in enumerate(rel_y) if r]  # questions with no relevant candidate in y are dropped
            ranks = ranks_of(all_scores[np.ix_(np.asarray(keep, dtype=np.int64), np.asarray(cols, dtype=np.int64))],
                             [rel_y[i] for i in keep])
            value = float(np.mean([average_precision(r, k) for r in ranks])) if keep else float("nan")
            if x == y:
                mono[x] = value
            else:
                cross[(x, y)] = value
    langs = data.languages
    return {
        "mono": {**mono, "avg": float(np.mean([mono[x] for x in langs]))},
        "cross": {**{x: float(np.mean([cross[(x, y)] for y in langs if y != x])) for x in langs},
                  "avg": float(np.mean(list(cross.values()))), "pairs": len(cross)},
        "multi": {**multi, "avg": float(np.mean([multi[x] for x in langs]))},
        "language_bias": {**bias, "avg": float(np.mean([bias[x] for x in langs]))},
        "candidates": len(data.candidates),
        "questions_per_language": {x: len(data.questions[x]) for x in langs},
    }


def fold_of(qid: str, folds: int) -> int:
    return int.from_bytes(hashlib.blake2b(qid.encode(), digest_size=4).digest(), "little") % folds


def oracle_xqg(data: XquadDataset, encoder: TextEncoder, *, passage_lang: str = "en", query_langs: Sequence[str],
               target_langs: Sequence[str], n_values: Sequence[int], alphas: Sequence[float], folds: int = 5,
               mode: str = "sum") -> dict:
    """'Oracle xQG' on XQuAD: passages are the `passage_lang` paragraphs; a paragraph's "generated queries"
    are the human questions about it in `target_langs`, first n per language by question id, taken only
    from folds other than the evaluated question's (folds by question id, so neither a question nor its
    translations ever help retrieve its own paragraph). Scores per question: RR@10 and R@1 of the gold
    paragraph. Returns the curve over (n, alpha) and, per query language, the t-test of each setting
    against no fusion."""
    passages = data.paragraphs[passage_lang]
    p_emb = encoder.encode_passages(data.titles, passages)
    q_emb = {lang: encoder.encode_queries([q.text for q in data.questions[lang]]) for lang in
             sorted(set(query_langs) | set(target_langs))}

    def per_question_scores(fused_for_fold: dict[int, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for lang in query_langs:
            questions = data.questions[lang]
            rr, r1 = np.zeros(len(questions)), np.zeros(len(questions))
            for f, fused in fused_for_fold.items():
                idx = [i for i, q in enumerate(questions) if fold_of(q.qid, folds) == f]
                if not idx:
                    continue
                scores = q_emb[lang][idx] @ fused.T
                ranks = np.array(ranks_of(scores, [[questions[i].paragraph] for i in idx]))[:, 0]
                rr[idx] = np.where(ranks <= 10, 1.0 / ranks, 0.0)
                r1[idx] = (ranks == 1).astype(float)
            out[lang] = {"RR@10": rr, "R@1": r1}
        return out

    def fused_passages(n: int, alpha: float) -> dict[int, np.ndarray]:
        result = {}
        for f in range(folds):
            if n == 0 or alpha == 0:
                result[f] = p_emb
                continue
            vectors, owners = [], []
            for lang in target_langs:
                per_paragraph: dict[int, list[int]] = defaultdict(list)
                for i, q in sorted(enumerate(data.questions[lang]), key=lambda t: t[1].qid):
                    if fold_of(q.qid, folds) != f and len(per_paragraph[q.paragraph]) < n:
                        per_paragraph[q.paragraph].append(i)
                for paragraph, rows in per_paragraph.items():
                    vectors.append(q_emb[lang][rows])
                    owners.extend([paragraph] * len(rows))
            stacked = np.concatenate(vectors) if vectors else np.zeros((0, p_emb.shape[1]), np.float32)
            result[f], _ = fuse(p_emb, stacked, np.asarray(owners, dtype=np.int64), alpha=alpha, mode=mode,
                                nominal_queries=n * len(target_langs))
        return result

    baseline = per_question_scores(fused_passages(0, 0.0))
    curve = []
    for n in n_values:
        for alpha in alphas:
            scores = baseline if n == 0 or alpha == 0 else per_question_scores(fused_passages(n, alpha))
            row: dict[str, Any] = {"n": n, "alpha": alpha, "per_language": {}}
            for lang in query_langs:
                test = paired_t_test(baseline[lang]["RR@10"], scores[lang]["RR@10"], comparisons=len(query_langs))
                row["per_language"][lang] = {"MRR@10": float(scores[lang]["RR@10"].mean()),
                                             "R@1": float(scores[lang]["R@1"].mean()),
                                             "p": test.p, "p_bonferroni": test.p_bonferroni}
            all_base = np.concatenate([baseline[lang]["RR@10"] for lang in query_langs])
            all_new = np.concatenate([scores[lang]["RR@10"] for lang in query_langs])
            overall = paired_t_test(all_base, all_new)
            row["MRR@10"] = float(np.mean([row["per_language"][x]["MRR@10"] for x in query_langs]))
            row["R@1"] = float(np.mean([row["per_language"][x]["R@1"] for x in query_langs]))
            row["p"] = overall.p
            curve.append(row)
    return {"test": "paired two-sided t-test on per-question RR@10 against no fusion (Bonferroni over "
                    "query languages per language)", "folds": folds, "mode": mode, "curve": curve}


def multilingual_pooled(data: XquadDataset, encoder: TextEncoder, *, langs: Sequence[str]) -> dict:
    """Questions in each language against the paragraphs of all `langs` pooled; relevant = the question's
    paragraph in every language. mAP and language bias, per query language."""
    cand = [(lang, p) for lang in langs for p in range(len(data.paragraphs[lang]))]
    cand_emb = np.concatenate([encoder.encode_passages(data.titles, data.paragraphs[lang]) for lang in langs])
    column = {c: i for i, c in enumerate(cand)}
    out: dict[str, dict[str, float]] = {"mAP": {}, "language_bias": {}}
    for lang in langs:
        questions = data.questions[lang]
        scores = encoder.encode_queries([q.text for q in questions]) @ cand_emb.T
        ranks = ranks_of(scores, [[column[(x, q.paragraph)] for x in langs] for q in questions])
        out["mAP"][lang] = float(np.mean([average_precision(r) for r in ranks]))
        out["language_bias"][lang] = language_bias(ranks)
    for key in ("mAP", "language_bias"):
        out[key]["avg"] = float(np.mean([out[key][x] for x in langs]))
    return out


def beir_evaluate(data: BeirDataset, encoder: TextEncoder, *, k: int = 100, batch: int = 256,
                  measures: Sequence[str] = ("nDCG@10", "R@100", "RR@10"), index_uri: str | None = None,
                  nprobe: int | None = None, storage=None) -> dict:
    """Exact dense retrieval over the whole corpus, or with `index_uri` through a built index (its passages
    must carry the corpus ids); trec_eval metrics through ir-measures."""
    qids = [q for q in data.topics if q in data.qrels]
    q_emb = encoder.encode_queries([data.topics[q] for q in qids])
    run: dict[str, dict[str, float]] = {}
    if index_uri:
        from xdr.index.search import ShardedSearcher

        searcher = ShardedSearcher(index_uri, storage=storage)
        hits = searcher.search(q_emb, k, nprobe)
        for qid, ids, scores in zip(qids, hits.ids, hits.scores):
            run[qid] = {d: float(s) for d, s in zip(ids, scores) if d is not None}
        aggregate, per_query = trec_metrics(run, {q: data.qrels[q] for q in qids}, measures)
        return {"metrics": aggregate, "queries": len(qids), "documents": searcher.manifest["vectors"],
                "per_query": per_query, "index": index_uri, "nprobe": nprobe}
    doc_ids = list(data.corpus)
    doc_emb = encoder.encode_passages([data.corpus[d][0] for d in doc_ids], [data.corpus[d][1] for d in doc_ids])
    for start in range(0, len(qids), batch):
        scores = q_emb[start: start + batch] @ doc_emb.T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        for row, qid in enumerate(qids[start: start + batch]):
            run[qid] = {doc_ids[j]: float(scores[row, j]) for j in top[row]}
    aggregate, per_query = trec_metrics(run, {q: data.qrels[q] for q in qids}, measures)
    return {"metrics": aggregate, "queries": len(qids), "documents": len(doc_ids), "per_query": per_query}


def xor_evaluate(questions: Sequence, passages: dict[str, tuple[str, str]], encoder: TextEncoder, *,
                 depth: int = 100, run_uri: str | None = None, index_uri: str | None = None, nprobe: int | None = None,
                 storage=None) -> dict:
    """R@2kt and R@5kt (XOR-Retrieve). Passages are encoded here, or, with `run_uri`, taken from an
    indexing run's fused embeddings (the large-corpus path: the Ray job did the encoding), searched
    exactly, or with `index_uri` through a built (IVF-PQ) index."""
    from xdr.eval.metrics import xor_recall
    from xdr.index.search import ExactSearcher, ShardedSearcher

    q_emb = encoder.encode_queries([q.text for q in questions])
    if index_uri:
        hits = ShardedSearcher(index_uri, storage=storage).search(q_emb, depth, nprobe).ids
    elif run_uri:
        hits = ExactSearcher(run_uri, storage=storage).search(q_emb, depth).ids
    else:
        doc_ids = list(passages)
        doc_emb = encoder.encode_passages([passages[d][0] for d in doc_ids], [passages[d][1] for d in doc_ids])
        top = np.argsort(-(q_emb @ doc_emb.T), axis=1, kind="stable")[:, :depth]
        hits = [[doc_ids[j] for j in row] for row in top]
    per_language: dict[str, list] = defaultdict(list)
    for q, ranked in zip(questions, hits):
        per_language[q.lang].append(([passages[d][1] for d in ranked if d is not None], q.answers))
    return {"R@2kt": xor_recall(per_language, 2000), "R@5kt": xor_recall(per_language, 5000), "depth": depth,
            "questions": len(questions)}
