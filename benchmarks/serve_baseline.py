"""The two reference apps that benchmarks/bench_serve.py measures `xdr serve` against.

- `app`: what a user writes by hand without Ray: one uvicorn process, FastAPI, the library's encoder and
  ShardedSearcher called per request (FastAPI runs the sync handler in its thread pool). The index comes
  from $XDR_BENCH_INDEX.
- `noop_app()`: Ray Serve's own floor: a FastAPI ingress deployment that answers every POST /search with a
  fixed body, so everything it costs is Serve's (proxy, hop to the replica, FastAPI).

    XDR_BENCH_INDEX=RUN/index python -m uvicorn serve_baseline:app --app-dir benchmarks --port 8000
"""

import json
import os
from contextlib import asynccontextmanager
from functools import cache

from fastapi import FastAPI
from pydantic import BaseModel

FIXED_ANSWER = {"results": [[{"id": "demo-000", "score": 1.0}]], "took_ms": 0.0}


class Question(BaseModel):
    queries: list[str]
    k: int = 10


@cache
def _searcher():
    from xdr.config import EncoderConfig
    from xdr.index.search import ShardedSearcher
    from xdr.io.storage import Storage
    from xdr.models.encoder import make_encoder

    index = os.environ["XDR_BENCH_INDEX"]
    manifest = json.loads(Storage().read_bytes(f"{index}/manifest.json"))
    return make_encoder(EncoderConfig.model_validate(manifest["encoder"])), ShardedSearcher(index)


@asynccontextmanager
async def _load_first(_: FastAPI):
    _searcher()  # the index and the encoder are ready before the first request
    yield


app = FastAPI(lifespan=_load_first)


@app.post("/search")
def search(request: Question) -> dict:
    encoder, searcher = _searcher()
    hits = searcher.search(encoder.encode_queries(request.queries), request.k)
    return {"results": [[{"id": i, "score": float(s)} for i, s in zip(ids, scores) if i is not None]
                        for ids, scores in zip(hits.ids, hits.scores.tolist())]}


def noop_app(read_body: bool = False):
    """Serve's floor as an application: a fixed answer; with `read_body`, only after FastAPI has read and
    parsed the request body as a search request (Serve's replica fetches the body from the proxy in a call
    of its own). Built on call: importing this module must not need Ray. The replicas import this module:
    the Ray that runs them needs benchmarks/ on its PYTHONPATH (bench_serve.py sets it)."""
    from ray import serve

    noop = FastAPI()

    # the same request limit as xdr's Router (Serve's default of 5 would queue 32 clients in the proxy)
    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=96)
    @serve.ingress(noop)
    class NoOp:
        if read_body:
            @noop.post("/search")
            async def search(self, request: Question) -> dict:
                return FIXED_ANSWER
        else:
            @noop.post("/search")
            async def search(self) -> dict:
                return FIXED_ANSWER

    return NoOp.bind()
