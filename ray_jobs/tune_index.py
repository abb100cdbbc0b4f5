"""The index tuning job: which factory and nprobe, measured in the task metric, its grid as Ray tasks.

    xdr tune-index --eval.kind=miracl-yo --eval.path=../shared/data/miracl-yo --output=tune-output/miracl-yo
    xdr tune-index --eval.kind=beir --eval.corpus=c.jsonl --eval.topics=t.tsv --eval.qrels=q.tsv --run=RUN ...

The run (encode, exact search, the grid, the report) is the library's (xdr.experiments.index_tuner);
this module runs its grid on Ray and prints the summary.
"""

from __future__ import annotations

import logging
from typing import Any

from ray_jobs.common import on_terminal, run_job
from ray_jobs.tasks import RayTasks
from xdr.config import TuneIndexConfig
from xdr.experiments import index_tuner
from xdr.experiments.index_report import format_summary

log = logging.getLogger("xdr.tune_index")


def tune_index(config: TuneIndexConfig) -> dict[str, Any]:
    return index_tuner.tune_index(config, RayTasks(max_retries=2), emit=log.info, bar=on_terminal())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_job("Sweep FAISS factories and nprobe in the task metric.", argv, TuneIndexConfig, tune_index,
                   format_summary)


if __name__ == "__main__":
    main()
