"""Set-up shared by every job: arguments and config, logging, connecting to Ray."""

from __future__ import annotations

import argparse
import logging
import os

import ray

from xdr.config import IndexingJobConfig, load_model

log = logging.getLogger("xdr")


def parse_job_args(description: str, argv: list[str] | None = None,
                   model_cls=IndexingJobConfig) -> tuple[argparse.Namespace, IndexingJobConfig]:
    """`--config FILE`, then overrides as `--section.field=value`, `--section.field value` or
    `--set section.field=value`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address; 'local' starts a fresh local Ray (default: RAY_ADDRESS, "
                        "else the cluster `ray start` runs on this machine, else a local Ray)")
    args, rest = parser.parse_known_args(argv)
    overrides = list(args.set)
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            parser.error(f"unexpected argument {token!r}")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if i + 1 >= len(rest):
                parser.error(f"{token} needs a value")
            value, i = rest[i + 1], i + 1
        overrides.append(f"{key.replace('-', '_')}={value}")
        i += 1
    try:
        config = load_model(model_cls, args.config, overrides)
    except (OSError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    return args, config


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("XDR_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def connect_ray(address: str | None = None) -> None:
    """Join the cluster a `ray job submit` runs in (RAY_ADDRESS), or start a local Ray."""
    if ray.is_initialized():
        return
    ray.init(address=address or os.environ.get("RAY_ADDRESS"), logging_level=logging.WARNING)
    log.info("Ray resources: %s", ray.cluster_resources())


def gpus_per_actor(configured: float | None) -> float:
    """The configured value, else 1 if the cluster has GPUs now, else 0 (CPU inference)."""
    if configured is not None:
        return configured
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def run_job(description: str, argv: list[str] | None, model_cls, job, summary) -> dict:
    """The body of every job's main(): arguments and config, logging, Ray, the job, its summary."""
    setup_logging()
    args, config = parse_job_args(description, argv, model_cls)
    connect_ray(args.address)
    manifest = job(config)
    print(summary(manifest), flush=True)
    return manifest


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
