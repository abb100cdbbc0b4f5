"""Shared fixtures: tiny offline models, one local Ray, one SeaweedFS S3 server, job configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xdr.models.tiny import build_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """s3:// model folders are copied here, not into ~/.cache (set before Ray starts: workers inherit it)."""
    folder = tmp_path_factory.mktemp("model-cache")
    saved = os.environ.get("XDR_MODEL_CACHE")
    os.environ["XDR_MODEL_CACHE"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("XDR_MODEL_CACHE", None)
    else:
        os.environ["XDR_MODEL_CACHE"] = saved


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """Started after the S3 server, so its workers inherit the AWS settings like a configured node."""
    ray = pytest.importorskip("ray")
    from ray_jobs.common import start_local_ray
    from ray_jobs.serve_proxy import configure_ingress

    configure_ingress("proxy")  # Serve's Python proxy, with xdr's 503 for a request whose replica died
    start_local_ray(2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from tests.support.s3_server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)  # standard AWS settings: the library and Ray workers read these
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()
