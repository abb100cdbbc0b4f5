"""Training throughput of the Ray Train job: examples/s with 1 and 2 workers, side by side in one run.

    python benchmarks/bench_train.py --model usem3 --steps 30 --batch-size 32 --json out.json

Trains on XQuAD (hybrid batches, Eq. 1 loss) through `ray_jobs.train_encoder.run_training` on a local
Ray; examples/s is measured inside the workers from the first step to the last (Ray and model start-up
excluded). On a 2-core machine two workers share the cores, so the ratio says what data parallelism costs
in communication here, not what it gains on a cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="usem3")
    parser.add_argument("--xquad", default=str(REPO.parent / "shared" / "data" / "xquad"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import ray

    from ray_jobs.common import start_local_ray
    from ray_jobs.train_encoder import run_training
    from xdr.config import TrainEncoderConfig

    rows = []
    with tempfile.TemporaryDirectory() as work:
        start_local_ray(None, log_file=Path(work) / "ray.log")
        try:
            for workers in args.workers:
                config = TrainEncoderConfig.model_validate({
                    "output": f"{work}/run-{workers}", "model": args.model, "steps": args.steps,
                    "batch_size": args.batch_size, "train": [{"kind": "xquad", "path": args.xquad,
                                                              "articles": [1, 28]}],
                    "checkpoint_every": args.steps, "num_workers": workers,
                    "cpus_per_worker": max(0.5, 2 / workers - 0.25), "passage_max_tokens": 128})
                manifest = run_training(config)
                rows.append({"workers": workers, "examples_per_s": round(manifest["examples_per_s"], 2),
                             "seconds_total": manifest["seconds"]})
                print(rows[-1], flush=True)
        finally:
            ray.shutdown()
    base = rows[0]["examples_per_s"]
    print(f"\nTraining throughput, {args.model}, batch {args.batch_size}, {args.steps} steps\n")
    print("| workers | examples/s | ratio to 1 worker | job seconds |\n|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['workers']} | {row['examples_per_s']} | {row['examples_per_s'] / base:.2f} | "
              f"{row['seconds_total']} |")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
