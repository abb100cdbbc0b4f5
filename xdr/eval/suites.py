"""The evaluation suites behind `xdr evaluate` (ray_jobs.evaluate): one function per kind of data set, each
returning the result dict and its Markdown; `evaluate(config)` runs one and writes result.json and result.md
(+ PNG for sweeps) into `config.output`.
"""

from __future__ import annotations

import time
from pathlib import Path

from xdr.config import EvaluateConfig
from xdr.eval import datasets, experiments, report
from xdr.models.encoder import make_encoder


def _given(value: str | None) -> str:
    """An input the config's validator requires for this kind of evaluation."""
    assert value is not None
    return value


def _encoder(c: EvaluateConfig):
    return make_encoder(c.encoder)


def _lareqa(c: EvaluateConfig) -> tuple[dict, str]:
    articles = range(c.articles[0], c.articles[1] + 1) if c.articles else None
    data = datasets.load_lareqa(Path(_given(c.data)), articles=articles)
    result = experiments.lareqa_evaluate(data, _encoder(c), k=c.k)
    langs = sorted(result["questions_per_language"])
    rows = {lang: {"mono": result["mono"][lang], "cross": result["cross"][lang], "multi": result["multi"][lang],
                   "bias": result["language_bias"][lang]} for lang in langs + ["avg"]}
    md = (f"mAP{'@' + str(c.k) if c.k else ''} on {Path(_given(c.data))} ({result['candidates']:,} candidates; cross "
          f"averaged over {result['cross']['pairs']} ordered pairs; bias = mean max-min rank of the relevant "
          f"candidates in the multi setting)\n\n" + report.table(rows, ["mono", "cross", "multi", "bias"]))
    return result, md


def _oracle(c: EvaluateConfig) -> tuple[dict, str]:
    data = datasets.load_xquad(Path(_given(c.data)))
    encoder = _encoder(c)
    query_langs = [x for x in datasets.XQUAD_LANGUAGES if x != "en"]
    result = experiments.oracle_xqg(data, encoder, query_langs=query_langs, target_langs=query_langs,
                                    n_values=c.n, alphas=c.alpha, folds=c.folds)
    result["multilingual"] = experiments.multilingual_pooled(data, encoder, langs=list(datasets.XQUAD_LANGUAGES))
    curve = result["curve"]
    base = next(r for r in curve if r["n"] == 0 or r["alpha"] == 0)
    best = max(curve, key=lambda r: r["MRR@10"])
    rows = {lang: {"MRR@10 no xQG": base["per_language"][lang]["MRR@10"],
                   "MRR@10 xQG": best["per_language"][lang]["MRR@10"],
                   "R@1 no xQG": base["per_language"][lang]["R@1"], "R@1 xQG": best["per_language"][lang]["R@1"],
                   "p (Bonf.)": best["per_language"][lang]["p_bonferroni"]} for lang in query_langs}
    rows["avg"] = {"MRR@10 no xQG": base["MRR@10"], "MRR@10 xQG": best["MRR@10"], "R@1 no xQG": base["R@1"],
                   "R@1 xQG": best["R@1"], "p (Bonf.)": best["p"]}
    sweep = {f"alpha={a}": ([r["n"] for r in curve if r["alpha"] == a], [r["MRR@10"] for r in curve if r["alpha"] == a])
             for a in c.alpha}
    report.plot_curves(Path(c.output) / "oracle_xqg_sweep.png", sweep, xlabel="human queries per language (n)",
                       ylabel="MRR@10 (11 query languages, English passages)", title="Oracle xQG on XQuAD")
    sweep_rows = {f"n={r['n']}, alpha={r['alpha']}": {"MRR@10": r["MRR@10"], "R@1": r["R@1"], "p": r["p"]}
                  for r in curve}
    multi = result["multilingual"]
    md = (f"Oracle xQG on {Path(_given(c.data))}: questions in 11 languages against the 240 English paragraphs; best "
          f"setting n={best['n']}, alpha={best['alpha']} ({c.folds}-fold by question id; {result['test']})\n\n"
          + report.table(rows, list(rows["avg"]), fmt="{:.4g}") + "\n\nSweep (all query languages)\n\n"
          + report.table(sweep_rows, ["MRR@10", "R@1", "p"], fmt="{:.4g}")
          + "\n\nMultilingual: questions against the paragraphs of all 12 languages pooled (no fusion)\n\n"
          + report.table({lang: {"mAP": multi["mAP"][lang], "bias": multi["language_bias"][lang]}
                          for lang in list(datasets.XQUAD_LANGUAGES) + ["avg"]}, ["mAP", "bias"]))
    return result, md


def _beir_like(data: datasets.BeirDataset, c: EvaluateConfig, name: str) -> tuple[dict, str]:
    result = experiments.beir_evaluate(data, _encoder(c), index_uri=c.index, nprobe=c.nprobe)
    how = f"index {c.index}, nprobe {c.nprobe or 'its default'}" if c.index else "exact search"
    md = (f"{name}: {result['queries']} queries, {result['documents']:,} documents, {how}\n\n"
          + report.table({name: result["metrics"]}, list(result["metrics"])))
    return result, md


def _xor(c: EvaluateConfig) -> tuple[dict, str]:
    from xdr.config import CorpusConfig
    from xdr.ingest.corpus import PassageValidator, detect_format, iter_raw_rows
    from xdr.io.storage import Storage

    storage = Storage()
    validator = PassageValidator(default_lang="en", max_text_chars=CorpusConfig(path="x").max_text_chars)
    passages = {}
    for uri in storage.expand(str(c.corpus)):
        for row in iter_raw_rows(storage, uri, detect_format(uri)):
            passage, _ = validator.check(row)
            if passage:
                passages[passage["id"]] = (passage["title"], passage["text"])
    questions = datasets.load_xor_questions(_given(c.questions))
    result = experiments.xor_evaluate(questions, passages, _encoder(c), depth=c.depth, run_uri=c.run,
                                      index_uri=c.index, nprobe=c.nprobe)
    rows = {lang: {"R@2kt": result["R@2kt"][lang], "R@5kt": result["R@5kt"][lang]} for lang in result["R@2kt"]}
    md = (f"XOR-Retrieve, {result['questions']} questions, depth {c.depth}"
          f"{' (embeddings of run ' + c.run + ')' if c.run else ''}"
          f"{' (index ' + c.index + ')' if c.index else ''}\n\n"
          + report.table(rows, ["R@2kt", "R@5kt"], fmt="{:.2f}"))
    return result, md


def evaluate(c: EvaluateConfig) -> dict:
    """Run the suite `c.kind` names; write result.json and result.md; return the result (with its Markdown
    under "markdown")."""
    start = time.perf_counter()
    if c.kind == "lareqa":
        result, md = _lareqa(c)
    elif c.kind == "oracle-xqg":
        result, md = _oracle(c)
    elif c.kind == "xor":
        result, md = _xor(c)
    elif c.kind == "miracl-yo":
        result, md = _beir_like(datasets.load_miracl_yo(_given(c.data)), c, "MIRACL-yo dev")
    else:
        result, md = _beir_like(datasets.load_beir(_given(c.corpus), _given(c.topics), _given(c.qrels)), c, "BEIR")
    result["encoder"] = c.encoder.model
    result["seconds"] = round(time.perf_counter() - start, 1)
    report.write_json(Path(c.output) / "result.json", result)
    md = f"encoder: `{c.encoder.model}`; {result['seconds']} s\n\n{md}\n"
    (Path(c.output) / "result.md").write_text(md, encoding="utf-8")
    return {**result, "markdown": md}
