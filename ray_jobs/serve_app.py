"""The Ray Serve application: POST /search over a sharded index, in many languages.

Deployments: `QueryEncoder` (the indexing job's Encoder at query length, requests batched with
@serve.batch), one `IndexShard` per serving shard (the library's ShardSearcher; nprobe through
user_config), and `Router`, the FastAPI ingress that validates, encodes, fans out, merges the per-shard
top-k (xdr.search.merge_topk) and looks up ids and text.

    xdr serve --index=demo-output/run/index          # local, on 127.0.0.1:8000
    serve deploy cluster/serve_config.yaml            # on a cluster (import path ray_jobs.serve_app:app_builder)
"""


import asyncio
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from xdr.config import EncoderConfig, ServeConfig
from xdr.encoder import make_encoder
from xdr.index import IndexLayout
from xdr.search import ShardSearcher, merge_topk
from xdr.storage import Storage


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[str] = Field(..., description="Questions, in any language the encoder knows.")
    k: int = Field(10, description="Results per query.")
    nprobe: int | None = Field(None, description="IVF lists to search; default: the index's setting.")
    return_text: bool = Field(False, description="Add each passage's title and text.")


class Hit(BaseModel):
    id: str
    score: float
    title: str | None = None
    text: str | None = None


class SearchResponse(BaseModel):
    results: list[list[Hit]]
    took_ms: float


@serve.deployment
class QueryEncoder:
    def __init__(self, encoder: dict):
        self.encoder = make_encoder(EncoderConfig.model_validate(encoder))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.encoder.encode_queries(texts))

    async def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack(await asyncio.gather(*(self._encode_batch(t) for t in texts)))


@serve.deployment
class IndexShard:
    def __init__(self, index_root: str, shard: int, storage: dict, cache_dir: str | None):
        from xdr.config import StorageConfig

        self.searcher = ShardSearcher(index_root, shard, storage=Storage(StorageConfig.model_validate(storage)),
                                      cache_dir=cache_dir)

    def reconfigure(self, user_config: dict) -> None:
        self.searcher.nprobe = int(user_config.get("nprobe", self.searcher.nprobe))

    def search(self, query_emb: np.ndarray, k: int, nprobe: int | None,
               columns: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, dict[int, dict]]:
        """This shard's top-k, with the docs of its hits (one round trip per shard)."""
        scores, ids = self.searcher.search(query_emb, k, nprobe)
        found = np.unique(ids[ids >= 0])
        return scores, ids, dict(zip(found.tolist(), self.searcher.lookup(found, columns)))

    def check_health(self) -> None:
        if self.searcher.size <= 0:
            raise RuntimeError("the shard holds no vectors")


api = FastAPI(title="xdr search", description="Cross-lingual dense retrieval over an xQG-augmented index.")


@serve.deployment
@serve.ingress(api)
class Router:
    def __init__(self, encoder: DeploymentHandle, shards: list[DeploymentHandle], limits: dict, info: dict,
                 token: str | None):
        self.encoder, self.shards = encoder, shards
        self.limits, self.info, self.token = limits, info, token

    def _authorize(self, authorization: str | None) -> None:
        if self.token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                                headers={"WWW-Authenticate": "Bearer"})

    def _validate(self, request: SearchRequest) -> None:
        lim = self.limits
        if not request.queries:
            raise HTTPException(400, "queries is empty; send at least one question")
        if len(request.queries) > lim["max_queries"]:
            raise HTTPException(400, f"{len(request.queries)} queries; at most {lim['max_queries']} per request")
        for i, query in enumerate(request.queries):
            if not query.strip():
                raise HTTPException(400, f"queries[{i}] is empty")
            if len(query) > lim["max_query_chars"]:
                raise HTTPException(400, f"queries[{i}] has {len(query)} characters; at most {lim['max_query_chars']}")
        if not 1 <= request.k <= lim["max_k"]:
            raise HTTPException(400, f"k={request.k} is out of range; expected 1..{lim['max_k']}")
        if request.nprobe is not None and not 1 <= request.nprobe <= lim["max_nprobe"]:
            raise HTTPException(400, f"nprobe={request.nprobe} is out of range; expected 1..{lim['max_nprobe']}")

    @api.post("/search", response_model=SearchResponse)
    async def search(self, request: SearchRequest, authorization: str | None = Header(None)) -> SearchResponse:
        self._authorize(authorization)
        self._validate(request)
        start = time.perf_counter()
        query_emb = await self.encoder.encode.remote(request.queries)
        columns = ("id", "title", "text") if request.return_text else ("id",)
        answers = await asyncio.gather(*(s.search.remote(query_emb, request.k, request.nprobe, columns)
                                         for s in self.shards))
        scores, ids = merge_topk([a[0] for a in answers], [a[1] for a in answers], request.k)
        docs = {i: row for a in answers for i, row in a[2].items()}
        results = [[Hit(score=float(score), **docs[i]) for score, i in zip(s_row, i_row) if i >= 0]
                   for s_row, i_row in zip(scores.tolist(), ids.tolist())]
        return SearchResponse(results=results, took_ms=round(1000 * (time.perf_counter() - start), 2))

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/info")
    async def get_info(self, authorization: str | None = Header(None)) -> dict:
        self._authorize(authorization)
        return self.info


def read_token(config: ServeConfig) -> str | None:
    """The bearer token from the configured file or environment variable; None = open endpoint."""
    if config.token_file:
        token = Path(config.token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"token_file {config.token_file} is empty")
        return token
    return os.environ.get(config.token_env) or None


def build_app(config: ServeConfig):
    """The Serve application for a config (index manifest read once, here)."""
    storage = Storage(config.storage)
    storage_dict = storage.resolved().model_dump(mode="json")
    manifest = json.loads(storage.read_bytes(IndexLayout(config.index).manifest))
    encoder = config.encoder or EncoderConfig.model_validate(manifest["encoder"])
    replicas = {"num_cpus": config.replica_cpus}

    def scaling(bounds: tuple[int, int]) -> dict:
        return {"min_replicas": bounds[0], "max_replicas": bounds[1], "target_ongoing_requests": 4}

    encoder_app = QueryEncoder.options(autoscaling_config=scaling(config.encoder_replicas),
                                       ray_actor_options=replicas).bind(encoder.model_dump(mode="json"))
    shards = [IndexShard.options(name=f"IndexShard{s['shard']}", autoscaling_config=scaling(config.shard_replicas),
                                 ray_actor_options=replicas, user_config={"nprobe": manifest["nprobe"]})
              .bind(config.index, s["shard"], storage_dict, config.cache_dir) for s in manifest["shards"]]
    info = {"index": config.index, "factory": manifest["factory"], "dim": manifest["dim"],
            "vectors": manifest["vectors"], "shards": len(manifest["shards"]), "nprobe": manifest["nprobe"],
            "source_run": manifest["source_run"], "encoder": encoder.model, "pooling": encoder.pooling}
    limits = {"max_queries": config.max_queries, "max_query_chars": config.max_query_chars,
              "max_k": config.max_k, "max_nprobe": manifest["nlist"]}
    return Router.options(ray_actor_options=replicas).bind(encoder_app, shards, limits, info, read_token(config))


def app_builder(args: dict[str, Any]):
    """Entry point for `serve deploy` / `serve run`: the application's `args` are a ServeConfig."""
    return build_app(ServeConfig.model_validate(args))


def start(config: ServeConfig, *, name: str = "xdr") -> str:
    """Run the application on the connected Ray; returns its base URL."""
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=name, route_prefix="/")
    return f"http://{config.host}:{config.port}"
