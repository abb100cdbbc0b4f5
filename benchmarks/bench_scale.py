"""The whole path at corpus scale on one machine, with benchmark stand-ins for the models.

    python benchmarks/bench_scale.py --sizes 1000000 4500000 18000000 --resume-at 18000000 \\
        --workdir /tmp/xdr-scale --json docs/results/data/bench-scale-2026-11-30.json
    python benchmarks/bench_scale.py --tiny      # a minute: what the test suite runs

For each size N: a synthetic corpus as a user brings it (benchmarks/synthetic_corpus.py: 32 files, half
gzip JSON lines, half plain TSV, planted bad rows and duplicated ids), then the real jobs as a user runs
them, each in its own process on a fresh local Ray: `xdr index` (validation, generation, encoding +
fusion), `xdr build-index`, `xdr serve` and questions over HTTP. The models are the stand-ins of
xdr/models/stand_ins.py (`stand-in:lead-words` writes 1 query per passage in 1 language; `stand-in:hashing-64`
encodes): everything else is the production code. A sampler reads every process's memory and CPU time
each 0.5 s, keyed by what it runs (the driver, `ray::validate_unit`, the actors, `ray::add_part`, the
serving replicas). At `--resume-at` the indexing driver is killed (SIGKILL, with its Ray) once half the
parts are embedded and the same command is run again. Results go to the JSON file after every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.synthetic_corpus import write_corpus  # noqa: E402
from xdr.index.build import nlist_of  # noqa: E402

ENCODER, GENERATOR = "stand-in:hashing-64", "stand-in:lead-words"


class Sampler:
    """Peak RSS and CPU seconds of every process, by kind (a Ray worker's kind is the task or actor it runs,
    from its process title; CPU time between two samples goes to the kind the process had)."""

    def __init__(self, driver_pid: int, every_s: float = 0.5):
        self.driver_pid, self.every_s = driver_pid, every_s
        self.peak_rss: dict[str, int] = defaultdict(int)
        self.last_rss: dict[int, tuple[str, int]] = {}  # pid -> (kind, RSS at the last sample)
        self.cpu_s: dict[str, float] = defaultdict(float)
        self._last_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _kind(self, proc: psutil.Process) -> str | None:
        if proc.pid == self.driver_pid:
            return "driver"
        title = (proc.cmdline() or [""])[0]
        if title.startswith("ray::"):
            name = title[5:].split(" ")[0]
            if "ServeReplica:" in name:  # SERVE_REPLICA::app#Dep#id:ServeReplica:app:Dep.method -> ServeReplica:app:Dep
                return "ServeReplica:" + name.split("ServeReplica:")[1].split(".")[0]
            name = name.rsplit(".", 1)[0] if "." in name and not name.endswith(")") else name  # drop .method
            return None if name == "IDLE" else name
        if any(s in title for s in ("raylet", "gcs_server", "dashboard", "ray/_private", "log_monitor")):
            return "ray system"
        return None

    def _processes(self) -> list[psutil.Process]:
        """The driver and its descendants: the local Ray it started, never another Ray on the machine."""
        try:
            driver = psutil.Process(self.driver_pid)
            return [driver, *driver.children(recursive=True)]
        except psutil.Error:
            return []

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self._processes():
                try:
                    kind = self._kind(proc)
                    if kind is None:
                        continue
                    with proc.oneshot():
                        rss, times = proc.memory_info().rss, proc.cpu_times()
                except psutil.Error:
                    continue
                cpu = times.user + times.system
                self.cpu_s[kind] += cpu - self._last_cpu.get(proc.pid, 0.0)
                self._last_cpu[proc.pid] = cpu
                self.peak_rss[kind] = max(self.peak_rss[kind], rss)
                self.last_rss[proc.pid] = (kind, rss)
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        last: dict[str, int] = defaultdict(int)
        for kind, rss in self.last_rss.values():
            last[kind] = max(last[kind], rss)
        return {"peak_rss_mib": {k: round(v / 2**20) for k, v in sorted(self.peak_rss.items())},
                "last_rss_mib": {k: round(v / 2**20) for k, v in sorted(last.items())},
                "cpu_s": {k: round(v, 1) for k, v in sorted(self.cpu_s.items())}}


def _env() -> dict:
    return {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(REPO), "XDR_LOG_LEVEL": "INFO"}


def _run_job(args: list[str], log: Path, *, kill_when=None) -> tuple[dict, float, bool]:
    """Run a job command in its own session; returns (sampler report, seconds, killed)."""
    start = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        killed = False
        with Sampler(proc.pid) as sampler:
            while proc.poll() is None:
                if kill_when is not None and kill_when():
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                    proc.wait()
                    break
                time.sleep(0.05)
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}); see {log}")
    _reap(proc.pid)
    return sampler.report(), time.perf_counter() - start, killed


def _reap(pgid: int) -> None:
    """No process of a finished job's group may outlive it (its local Ray)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _folder_stats(folder: Path) -> dict:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {"objects": len(files), "bytes": sum(p.stat().st_size for p in files)}


def _check_exactly_once(run: Path, parts: int) -> int:
    """Embeddings part k holds exactly the ids of passages part k (validation made the passages unique)."""
    total = 0
    for part in range(parts):
        name = f"part-{part:05d}.parquet"
        passages = pq.read_table(run / "passages" / name, columns=["id"])["id"]
        embedded = pq.read_table(run / "embeddings" / name, columns=["id"])["id"]
        if not passages.equals(embedded):
            raise AssertionError(f"embeddings {name} does not hold exactly the ids of passages {name}")
        total += len(passages)
    return total


def _recompute_equal(run: Path, config: dict, parts: list[int], scratch: Path) -> bool:
    """The parts' queries and embeddings computed again in this process equal the job's files byte for byte."""
    import shutil

    from xdr.config import IndexingJobConfig
    from xdr.pipeline.stages import EmbedPartStage, GenerateQueriesStage

    cfg = IndexingJobConfig.model_validate({**config, "output": str(scratch)})
    generate, embed = GenerateQueriesStage(cfg), EmbedPartStage(cfg)
    for part in parts:
        name = f"part-{part:05d}.parquet"
        (scratch / "passages").mkdir(parents=True, exist_ok=True)
        shutil.copy(run / "passages" / name, scratch / "passages" / name)
        generate.run_part(part)
        embed.run_part(part)
        for stage in ("queries", "embeddings"):
            if (scratch / stage / name).read_bytes() != (run / stage / name).read_bytes():
                return False
    return True


def _served_vs_exact(index: Path, run: Path, questions: list[str], hits: list[list[dict]], k: int) -> dict:
    """The endpoint's hits against brute force over every embeddings part (streamed, one part in memory):
    each served score is that passage's true score, `recall_at_k` is the share of the exact top-k served
    (ties counted by score), and the hit at each rank scores what the exact ranking's does. An exhaustive
    index (Flat lists, every list probed) must give recall 1 and the exact scores rank by rank."""
    from xdr.config import EncoderConfig
    from xdr.index.build import vectors_of
    from xdr.models.encoder import make_encoder

    manifest = json.loads((index / "manifest.json").read_text())
    queries = make_encoder(EncoderConfig.model_validate(manifest["encoder"])).encode_queries(questions)
    served = {h["id"] for row in hits for h in row}
    top = np.full((len(questions), k), -np.inf, dtype=np.float32)  # the exact top-k scores so far
    true_score: dict[str, np.ndarray] = {}
    for part in sorted((run / "embeddings").glob("part-*.parquet")):
        table = pq.read_table(part, columns=["id", "embedding"])
        scores = queries @ vectors_of(table).T
        top = -np.sort(-np.concatenate([top, scores], axis=1), axis=1)[:, :k]
        for row, passage_id in enumerate(table["id"].to_pylist()):
            if passage_id in served:
                true_score[passage_id] = scores[:, row]
    score_error = max((abs(h["score"] - float(true_score[h["id"]][q])) for q, row in enumerate(hits) for h in row),
                      default=float("inf"))  # no hit at all: fails the check
    tie = 1e-4
    found = [sum(h["score"] >= top[q, k - 1] - tie for h in row[:k]) for q, row in enumerate(hits)]
    # rank by rank against the exact ranking's scores: catches a wrong order, which recall does not
    rank_error = max((abs(h["score"] - float(top[q, j])) for q, row in enumerate(hits) for j, h in enumerate(row[:k])),
                     default=float("inf"))
    return {"questions": len(questions), "max_score_error": round(float(score_error), 6),
            "recall_at_k": round(float(np.mean(found)) / k, 4), "max_rank_score_error": round(float(rank_error), 6),
            "k": k}


def _serve_and_query(index: Path, run: Path, workdir: Path, log: Path, n_questions: int) -> dict:
    """`xdr serve`, then questions (each passage's lead words) at 1 and 8 clients; replica memory."""
    from ray_jobs.common import free_port
    from xdr import client

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = open(log, "a")
    proc = subprocess.Popen([sys.executable, "-m", "ray_jobs.cli", "serve", f"--index={index}", f"--port={port}"],
                            cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.perf_counter()
    result: dict = {}
    try:
        with Sampler(proc.pid) as sampler:
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.perf_counter() - started > 900:
                    raise RuntimeError(f"the endpoint did not come up; see {log}")
                time.sleep(1)
            result["load_s"] = round(time.perf_counter() - started, 1)
            table = pq.read_table(run / "passages" / "part-00000.parquet", columns=["id", "text"])
            rng = np.random.default_rng(0)
            rows = rng.choice(table.num_rows, size=min(n_questions, table.num_rows), replace=False)
            questions = [" ".join(table["text"][int(r)].as_py().split()[:8]) for r in rows]
            hits = client.search(url, questions[:20], k=10, return_text=True)
            result["top_hit_starts_with_question"] = float(np.mean(
                [bool(h) and h[0]["text"].startswith(q) for q, h in zip(questions, hits)]))
            result["served_vs_exact"] = _served_vs_exact(index, run, questions[:20], hits, k=10)

            def timed(question: str) -> float:
                t = time.perf_counter()
                client.search(url, [question], k=10)
                return (time.perf_counter() - t) * 1000

            for clients in (1, 8):
                with ThreadPoolExecutor(clients) as pool:
                    latencies = np.array(list(pool.map(timed, questions)))
                result[f"clients_{clients}"] = {"p50_ms": round(float(np.percentile(latencies, 50)), 2),
                                                "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                                                "questions": len(latencies)}
        result.update(sampler.report())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        _reap(proc.pid)
        out.close()
    return result


def run_size(row: dict, workdir: Path, files: int, resume: bool, factory: str, shards: int, nprobe: int,
             save, questions: int = 200) -> None:
    """Fill `row` (already in the results: `save` writes it as it grows)."""
    n = row["passages"]
    corpus, run = workdir / f"corpus-{n}", workdir / f"run-{n}"
    log = workdir / f"log-{n}.txt"
    row["stages"] = {}
    t = time.perf_counter()
    planted = (json.loads((corpus / "_planted.json").read_text()) if (corpus / "_planted.json").exists()
               else write_corpus(corpus, n, files, bad_every=min(50_000, max(10, n // 40))))
    row["corpus"] = {"files": files, "bytes": sum(p.stat().st_size for p in corpus.iterdir()),
                     "write_s": round(time.perf_counter() - t, 1), "planted_bad_rows": planted["bad_rows"],
                     "planted_duplicates": planted["duplicates"]}
    part_size = 1_000 if n <= 20_000 else 10_000
    config = {
        "output": str(run),
        # small parts in the tiny run: its stand-in models embed a 10,000-passage part in a blink, and the
        # kill at half the parts must leave parts for the rerun to do
        "corpus": {"path": str(corpus), "max_reject_fraction": 0.5, "passages_per_part": part_size},
        "generator": {"model": GENERATOR, "languages": ["fi"], "queries_per_language": 1},
        "encoder": {"model": ENCODER},
        "fusion": {"alpha": 0.1},
        "resources": {"gpus_per_actor": 0, "cpus_per_actor": 1, "generator_actors": [1, 1],
                      "encoder_actors": [1, 1]},
    }
    config_path = workdir / f"index-{n}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    job = ["ray_jobs.index_corpus", "--config", str(config_path)]
    parts_expected = -(-n // part_size)

    def half_embedded() -> bool:
        folder = run / "embeddings"
        return folder.exists() and sum(1 for _ in folder.glob("part-*.parquet")) >= parts_expected // 2

    if resume:
        report, seconds, killed = _run_job(job, log, kill_when=half_embedded)
        time.sleep(2)  # a worker's write in flight when the driver died lands (or not) by now
        done_before = sorted(p.name for p in (run / "embeddings").glob("part-*.parquet"))
        validated = re.search(r"corpus: .* \((\d+\.\d)s\)", log.read_text())  # the killed attempt's validation
        row["resume"] = {"killed_after_s": round(seconds, 1), "killed": killed, "parts_done": len(done_before),
                         "first_attempt_validation_s": float(validated.group(1)) if validated else None,
                         "first_attempt": report}
        rerun_start = time.time()
        watcher_result: dict = {}

        committed = {p.name for p in (run / "embeddings").glob("part-*.parquet")}  # the dying job's last ones too
        row["resume"]["committed"] = len(committed)

        def watch() -> None:  # the first embeddings part the rerun writes: when new work began
            while "first_new_part_s" not in watcher_result and not watcher_result.get("stop"):
                new = [p for p in (run / "embeddings").glob("part-*.parquet") if p.name not in committed]
                if new:
                    watcher_result["first_new_part_s"] = round(time.time() - rerun_start, 1)
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        report, seconds, _ = _run_job(job, log)
        watcher_result["stop"] = True
        row["resume"].update({"rerun_s": round(seconds, 1), **{k: v for k, v in watcher_result.items()
                                                                if k != "stop"}})
    else:
        report, seconds, _ = _run_job(job, log)
    manifest = json.loads((run / "manifest.json").read_text())
    counts, timings = manifest["counts"], manifest["timings"]
    row["index_job"] = {"wall_s": round(seconds, 1), **report, "counts": counts, "timings": timings}
    for stage in ("passages", "rejects", "queries", "embeddings"):
        row["stages"][stage] = _folder_stats(run / stage)
    reasons = counts["reject_reasons"]
    row["checks"] = {
        "passages_equal_planted": counts["passages"] == n,
        "duplicates_equal_planted": reasons.get("duplicate id", 0) == planted["duplicates"],
        "bad_rows_equal_planted": counts["rejects"] - reasons.get("duplicate id", 0) == planted["bad_rows"],
        "embeddings_exactly_once": _check_exactly_once(run, counts["parts"]) == n,
    }
    if resume:
        parts = sorted({0, row["resume"]["parts_done"] - 1, row["resume"]["parts_done"], counts["parts"] - 1})
        row["checks"]["resumed_parts_equal_recomputed"] = _recompute_equal(
            run, config, [p for p in parts if 0 <= p < counts["parts"]], workdir / f"recompute-{n}")
        row["checks"]["rerun_read_validation"] = bool(counts.get("validation_resumed"))
        # the rerun skipped exactly the parts committed before it and had parts of its own to embed
        row["checks"]["rerun_skipped_the_committed_parts"] = counts["parts_resumed"] == row["resume"]["committed"]
        row["checks"]["rerun_embedded_new_parts"] = (row["resume"]["committed"] < counts["parts"]
                                                    and "first_new_part_s" in row["resume"])
    save()

    index = run / "index"
    build = ["ray_jobs.build_index", f"--run={run}", f"--factory={factory}", f"--shards={shards}",
             f"--nprobe={nprobe}"]
    report, seconds, _ = _run_job(build, log)
    build_manifest = json.loads((index / "manifest.json").read_text())
    row["build"] = {"wall_s": round(seconds, 1), **report, "timings": build_manifest["timings"],
                    "vectors": build_manifest["vectors"], **_folder_stats(index)}
    row["checks"]["index_holds_every_passage"] = build_manifest["vectors"] == n
    shard_bytes = [(index / f"shard-{s:03d}.faissindex").stat().st_size for s in range(len(build_manifest["shards"]))]
    ids_bytes = [pq.read_table(index / f"shard-{s:03d}.docs.parquet", columns=["id"])["id"].nbytes
                 for s in range(len(shard_bytes))]
    row["build"]["shard_index_bytes"], row["build"]["shard_ids_bytes"] = shard_bytes, ids_bytes
    save()

    row["serve"] = _serve_and_query(index, run, workdir, log, n_questions=questions)
    exact = row["serve"]["served_vs_exact"]
    row["checks"]["served_scores_are_true_scores"] = exact["max_score_error"] < 1e-3
    if factory.endswith(",Flat") and nprobe >= nlist_of(factory):  # exhaustive: every list probed, no PQ
        row["checks"]["served_hits_equal_brute_force"] = (exact["recall_at_k"] == 1.0
                                                          and exact["max_rank_score_error"] < 1e-3)
    _replica_ratio(row)
    save()


def _replica_ratio(row: dict) -> None:
    shard = max(a + b for a, b in zip(row["build"]["shard_index_bytes"], row["build"]["shard_ids_bytes"]))
    # the replica that holds the shards: a shard deployment's, or the Router's when it searches them itself
    replica = max((v for k, v in row["serve"]["peak_rss_mib"].items() if "IndexShard" in k or "Router" in k),
                  default=0)
    row["serve"]["replica_rss_over_index_and_ids"] = round(replica * 2**20 / shard, 2)


def table(results: dict) -> str:
    lines = ["| passages | validate s | generate+embed s | index job s | build s (train / add / merge) | "
             "serve load s | p50 / p99 ms (1 client) | p50 / p99 ms (8) | peak RSS MiB: driver / validate / "
             "cut / generate / embed / add / merge / replica |", "|---" * 9 + "|"]
    for row in results["sizes"]:
        job, build, serve = row.get("index_job", {}), row.get("build", {}), row.get("serve", {})
        t = job.get("timings", {})
        bt = build.get("timings", {})
        merge = round(bt.get("total_s", 0) - bt.get("train_s", 0) - bt.get("add_s", 0), 1) if bt else "-"
        rss = {**job.get("peak_rss_mib", {}), **{f"b:{k}": v for k, v in build.get("peak_rss_mib", {}).items()}}

        def peak(*names, rss=rss):
            return max((v for k, v in rss.items() if any(n in k for n in names)), default="-")

        replica = max((v for k, v in serve.get("peak_rss_mib", {}).items() if "IndexShard" in k), default="-")
        c1, c8 = serve.get("clients_1", {}), serve.get("clients_8", {})
        lines.append(
            f"| {row['passages']:,} | {t.get('prepare_s', '-')} | {t.get('pipeline_s', '-')} | "
            f"{job.get('wall_s', '-')} | {build.get('wall_s', '-')} ({bt.get('train_s', '-')} / "
            f"{bt.get('add_s', '-')} / {merge}) | {serve.get('load_s', '-')} | {c1.get('p50_ms', '-')} / "
            f"{c1.get('p99_ms', '-')} | {c8.get('p50_ms', '-')} / {c8.get('p99_ms', '-')} | "
            f"{rss.get('driver', '-')} / {peak('validate_unit')} / {peak('cut_unit')} / "
            f"{peak('GenerateQueriesStage')} / {peak('EmbedPartStage')} / {peak('add_part')} / "
            f"{peak('merge_shard')} / {replica} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_500_000, 18_000_000])
    parser.add_argument("--resume-at", type=int, default=None, help="kill and rerun the indexing job at this size")
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--factory", default="IVF4096,PQ16np", help="the same at every size, for comparison")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only-serve", action="store_true",
                        help="measure the endpoint again over the indexes in --workdir, updating --json")
    parser.add_argument("--questions", type=int, default=200, help="questions asked at each client count")
    parser.add_argument("--tiny", action="store_true", help="20,000 passages, 4 files, IVF16, 40 questions: the "
                        "script runs (add --resume-at 20000 for the kill and rerun)")
    args = parser.parse_args()
    if args.tiny:
        args.sizes, args.files, args.factory, args.questions = [20_000], 4, "IVF16,Flat", 40
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="xdr-bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = {"machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
                          f"{psutil.virtual_memory().total / 2**30:.0f} GiB", "date": time.strftime("%Y-%m-%d"),
               "encoder": ENCODER, "generator": GENERATOR, "factory": args.factory, "nprobe": args.nprobe,
               "shards": args.shards, "tiny": args.tiny, "sizes": []}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    if args.only_serve:  # measure the endpoint again over indexes an earlier invocation built
        results = json.loads(args.json.read_text())
        for row in results["sizes"]:
            if row["passages"] in args.sizes:
                index, run = workdir / f"run-{row['passages']}" / "index", workdir / f"run-{row['passages']}"
                row["serve"] = _serve_and_query(index, run, workdir, workdir / f"log-{row['passages']}.txt",
                                                args.questions)
                _replica_ratio(row)
                save()
        print(table(results))
        return
    for n in args.sizes:
        row = {"passages": n}
        results["sizes"].append(row)
        run_size(row, workdir, args.files, n == args.resume_at, args.factory, args.shards, args.nprobe, save,
                 args.questions)
        save()
        print(json.dumps({"passages": n, "checks": row["checks"]}), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
