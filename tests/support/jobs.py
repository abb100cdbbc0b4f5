"""Job configs over the tiny models, and running or killing job drivers in their own sessions."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ray_jobs.common import session_processes
from tests.support.paths import REPO
from xdr.config import IndexingJobConfig


def make_config(models: dict[str, Path], corpus_path: str | Path, output: str | Path, **sections) -> IndexingJobConfig:
    """A small, fast job config over the tiny models; `sections` override whole fields."""
    data = {
        "output": str(output),
        "corpus": {"path": str(corpus_path), "passages_per_part": 8},
        "generator": {"model": str(models["generator"]), "languages": ["ar", "fi", "te"],
                      "queries_per_language": 2, "batch_size": 16, "max_new_tokens": 8},
        "encoder": {"model": str(models["encoder"]), "batch_size": 32},
        "resources": {"gpus_per_actor": 0, "cpus_per_actor": 0.5, "generator_actors": [1, 1],
                      "encoder_actors": [1, 1]},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return IndexingJobConfig.model_validate(data)


def processes_left(sid: int, within_s: float = 10.0) -> list:
    """The session's processes still alive after `within_s` seconds (Ray's workers exit a moment after the
    driver that stopped them)."""
    deadline = time.monotonic() + within_s
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def run_and_sigkill_when(argv: list[str], env: dict, ready, deadline_s: float, waiting_for: str) -> None:
    """Start a job's driver in its own session, wait until `ready()`, then SIGKILL the driver and the local
    Ray it started (a driver that dies mid-run)."""
    import signal
    import subprocess

    driver = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + deadline_s
        while not ready():
            assert driver.poll() is None and time.monotonic() < deadline, f"no {waiting_for} before the deadline"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        for leftover in processes_left(driver.pid, within_s=1.0):  # any process of the session outside its group
            leftover.kill()
