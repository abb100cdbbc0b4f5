"""The Ray Serve application: POST /search over a sharded index, in many languages.

`Router` is the FastAPI ingress: it validates, sheds load, batches the questions that arrive together
(@serve.batch), encodes them and searches. Where the shards are searched depends on the index:
- in the Router's own process (`InRouterShards`) when the index fits a replica (`shard_placement`): one
  Serve hop per request, the layout that costs least (docs/results/benchmarks.md, "The endpoint's cost");
- else in one `IndexShard` deployment per shard (`ShardDeployments`), called in parallel, their top-k
  merged (xdr.index.search.merge_topk): the layout for indexes spread over nodes.
The encoder runs in the Router, or in its own `QueryEncoder` deployment (`separate_encoder`, for GPU
replicas). A call to a replica that died is sent again (a search is idempotent); a request held by a Router
that died gets 503 with Retry-After from the proxy middleware in ray_jobs/serve_proxy.py.

    xdr serve --index=demo-output/run/index          # local, on 127.0.0.1:8000
    serve deploy cluster/serve_config.yaml            # on a cluster (import path ray_jobs.serve_app:app_builder)
"""


import asyncio
import hashlib
import hmac
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from xdr.config import EncoderConfig, ServeConfig, StorageConfig
from xdr.index.search import ShardedSearcher, ShardSearcher, merge_topk
from xdr.io.layout import IndexLayout
from xdr.io.storage import Storage
from xdr.models.encoder import make_encoder


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
    index_version: str = Field(..., description="The index that answered (every hit comes from this one).")


def _make_encoder(spec: dict):
    """{"encoder": EncoderConfig, "storage": StorageConfig} as dicts -> the encoder (an s3:// model folder is
    fetched with the index's storage settings)."""
    return make_encoder(EncoderConfig.model_validate(spec["encoder"]),
                        storage=Storage(StorageConfig.model_validate(spec["storage"])))


async def call_with_retry(call, retry_s: float):
    """`await call()`, sent again while the replica it went to has died (the handle routes the retry to a
    live replica, or waits for the controller's replacement), for at most `retry_s` seconds."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return await call()
        except RayActorError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)


@serve.deployment
class QueryEncoder:
    """Encodes queries in batches. The batch does not wait for company (timeout 0): under load, the texts
    that arrive while a batch is encoded form the next one, so latency stays low at one client and the
    batches grow with the load."""

    def __init__(self, encoder: dict, batch_size: int, batch_wait_s: float):
        self.encoder = _make_encoder(encoder)
        self._encode_batch.set_max_batch_size(batch_size)  # type: ignore[attr-defined]  # added by @serve.batch
        self._encode_batch.set_batch_wait_timeout_s(batch_wait_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.encoder.encode_queries(texts))

    async def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack(await asyncio.gather(*(self._encode_batch(t) for t in texts)))


@serve.deployment
class IndexShard:
    def __init__(self, index_root: str, shard: int, storage: dict, cache_dir: str | None):

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


@serve.deployment(ray_actor_options={"num_cpus": 0.01})
class ShardSet:
    """The ingress of an index version's shards application: it holds nothing, and exists so that the shard
    deployments it binds are deployed (and deleted) together, apart from the Router's application."""

    def __init__(self, *shards: DeploymentHandle):
        self.shards = len(shards)

    def count(self) -> int:
        return self.shards


Found = tuple[np.ndarray, np.ndarray, dict[int, dict]]  # merged top-k: scores, faiss ids, docs by faiss id


class InRouterShards:
    """Every shard searched in the Router's own process (for an index that fits one replica)."""

    def __init__(self, index_root: str, storage: dict, cache_dir: str | None):
        self.searcher = ShardedSearcher(index_root, storage=Storage(StorageConfig.model_validate(storage)),
                                        cache_dir=cache_dir)
        self.nprobe = self.searcher.manifest["nprobe"]

    def search(self, query_emb: np.ndarray, k: int, nprobe: int | None, columns: tuple[str, ...]) -> Found:
        scores, ids = self.searcher.search_ids(query_emb, k, nprobe or self.nprobe)
        return scores, ids, self.searcher.docs(ids, columns)


class ShardDeployments:
    """One IndexShard deployment per shard, asked in parallel; their top-k merged."""

    def __init__(self, handles: list[DeploymentHandle], retry_s: float):
        self.handles, self.retry_s = handles, retry_s

    async def search(self, query_emb: np.ndarray, k: int, nprobe: int | None, columns: tuple[str, ...]) -> Found:
        answers = await asyncio.gather(*(
            call_with_retry(lambda h=h: h.search.remote(query_emb, k, nprobe, columns), self.retry_s)
            for h in self.handles))
        scores, ids = merge_topk([a[0] for a in answers], [a[1] for a in answers], k)
        return scores, ids, {i: row for a in answers for i, row in a[2].items()}


api = FastAPI(title="xdr search", description="Cross-lingual dense retrieval over an xQG-augmented index.")


def _json_safe(value: Any) -> Any:
    """A value that JSON can carry: the numbers JSON has no word for (1e309 parses as infinity) and text
    that is not valid Unicode (a lone surrogate escape) are written out as text."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float) else str(value)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """422 naming each bad field. FastAPI's own handler echoes the input back and fails (500) when the
    input holds a value JSON cannot carry."""
    details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
               for e in err.errors()]
    return JSONResponse(status_code=422, content={"detail": _json_safe(details)})


@serve.deployment
@serve.ingress(api)
class Router:
    """Validates, sheds load, and searches. Concurrent questions are batched here (@serve.batch with no
    wait): one encoder pass and one search serve every question that arrived while the previous batch
    ran, so the per-call costs are paid per batch, not per question. `encoder` is the encoder's config (it
    runs here) or its deployment's handle; `shards` is the index (searched here) or the shard handles."""

    def __init__(self, encoder: DeploymentHandle | dict, shards: dict | list[DeploymentHandle], limits: dict,
                 info: dict, token: str | None):
        self.limits, self.info, self.token = limits, info, token
        self.encoder_handle = encoder if isinstance(encoder, DeploymentHandle) else None
        self.encoder = _make_encoder(encoder) if isinstance(encoder, dict) else None
        self.local, self.remote = None, None
        if isinstance(shards, list):  # shard deployments bound in this application (`serve deploy`)
            self.remote = ShardDeployments(shards, limits["retry_s"])
        elif "app" in shards:  # the shards application of this index version (`start`, `switch`)
            self.remote = ShardDeployments([serve.get_deployment_handle(f"IndexShard{s}", app_name=shards["app"])
                                            for s in range(shards["count"])], limits["retry_s"])
        else:
            self.local = InRouterShards(**shards)
        self._search_batch.set_max_batch_size(limits["batch_size"])  # type: ignore[attr-defined]  # @serve.batch
        self._search_batch.set_batch_wait_timeout_s(limits["batch_wait_s"])  # type: ignore[attr-defined]
        self.in_flight = 0
        # Serve's threads (its event loops, Ray's core worker) take turns on the GIL: at Python's default of
        # 5 ms a turn, each hand-over added milliseconds to a search that takes one
        sys.setswitchinterval(0.001)

    def reconfigure(self, user_config: dict) -> None:
        """nprobe of the shards searched here, changed live (the shard deployments take theirs)."""
        if self.local is not None:
            self.local.nprobe = int(user_config.get("nprobe", self.local.nprobe))

    def _admit(self) -> None:
        """Load shedding: past `max_inflight` searches in this replica, answer 503 at once. Queueing more
        would only make every caller wait longer for the same throughput."""
        if self.in_flight >= self.limits["max_inflight"]:
            retry = self.limits["retry_after_s"]
            raise HTTPException(503, f"the endpoint is at capacity ({self.in_flight} searches in flight); "
                                f"retry after {retry} s", headers={"Retry-After": str(retry)})

    async def _find(self, texts: list[str], k: int, nprobe: int | None, columns: tuple[str, ...]) -> Found:
        """Encode and search. What runs in this process runs on the event loop, not in a worker thread: one
        batch runs at a time anyway, and the hand-over to a thread and back cost more than the search
        itself (docs/results/benchmarks.md, "The endpoint's cost")."""
        if self.encoder is not None:
            query_emb = self.encoder.encode_queries(texts)
        else:
            handle = self.encoder_handle
            assert handle is not None
            query_emb = await call_with_retry(lambda: handle.encode.remote(texts), self.limits["retry_s"])
        if self.local is not None:
            return self.local.search(query_emb, k, nprobe, columns)
        assert self.remote is not None
        return await self.remote.search(query_emb, k, nprobe, columns)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _search_batch(self, items: list[tuple[str, int, int | None, bool]]) -> list[list[dict]]:
        """items: (question, k, nprobe, return_text). Questions with the same nprobe and columns share one
        search at the largest k among them; each gets its own top-k of the merged list."""
        groups: dict[tuple, list[int]] = {}
        for i, (_, _, nprobe, with_text) in enumerate(items):
            groups.setdefault((nprobe, with_text), []).append(i)
        results: list[list[dict]] = [[] for _ in items]

        async def search_group(nprobe: int | None, with_text: bool, rows: list[int]) -> None:
            k = max(items[i][1] for i in rows)
            columns = ("id", "title", "text") if with_text else ("id",)
            scores, ids, docs = await self._find([items[i][0] for i in rows], k, nprobe, columns)
            for j, i in enumerate(rows):
                results[i] = [{"score": score, **docs[fid]}
                              for score, fid in zip(scores[j].tolist(), ids[j].tolist()) if fid >= 0][:items[i][1]]

        await asyncio.gather(*(search_group(nprobe, with_text, rows)
                               for (nprobe, with_text), rows in groups.items()))
        return results

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
            try:
                query.encode("utf-8")
            except UnicodeEncodeError as err:
                raise HTTPException(400, f"queries[{i}] is not valid Unicode (a lone surrogate at character "
                                    f"{err.start}); send UTF-8 text") from None
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
        self._admit()
        start = time.perf_counter()
        self.in_flight += 1
        try:
            results = await asyncio.gather(*(self._search_batch((q, request.k, request.nprobe, request.return_text))
                                             for q in request.queries))
        finally:
            self.in_flight -= 1
        return SearchResponse(results=results, took_ms=round(1000 * (time.perf_counter() - start), 2),
                              index_version=self.info["version"])

    def serving(self) -> dict:
        """What this replica serves (for `switch`, through a handle; not an HTTP route)."""
        return self.info

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


def shards_fit_router(config: ServeConfig, manifest: dict) -> bool:
    """Whether the Router holds the shards itself: `shard_placement`, or for "auto" whether the vector
    files (held in memory; ids and texts stay memory-mapped) fit in `router_max_index_gb`."""
    if config.shard_placement != "auto":
        return config.shard_placement == "router"
    vector_bytes = sum(f["bytes"] for s in manifest["shards"] for f in s["files"] if f["uri"].endswith(".faissindex"))
    return vector_bytes <= config.router_max_index_gb * 2**30


def index_version(manifest_bytes: bytes) -> str:
    """A short name for one build of an index: the digest of its manifest (which lists every file's SHA-256)."""
    return hashlib.sha256(manifest_bytes).hexdigest()[:12]


def _read_index(config: ServeConfig) -> tuple[dict, str]:
    manifest_bytes = Storage(config.storage).read_bytes(IndexLayout(config.index).manifest)
    return json.loads(manifest_bytes), index_version(manifest_bytes)


def shards_app_name(name: str, version: str) -> str:
    """The application holding the shard deployments of one index version for the Router application `name`."""
    return f"{name}-shards-{version}"


def _inner_limit(config: ServeConfig) -> int:
    # Serve's default of 5 ongoing requests per replica caps @serve.batch at 5 and makes callers back off
    # while slots stand free; the Router sheds load itself (max_inflight), so the inner deployments take
    # everything the routers let through.
    return 4 * max(config.max_inflight, config.encoder_batch_size)


def _scaling(config: ServeConfig, bounds: tuple[int, int], target: float) -> dict:
    return {"min_replicas": bounds[0], "max_replicas": bounds[1], "target_ongoing_requests": target,
            "upscale_delay_s": config.upscale_delay_s, "downscale_delay_s": config.downscale_delay_s,
            "look_back_period_s": config.look_back_period_s}


def _shard_deployments(config: ServeConfig, manifest: dict, suffix: str = "") -> list:
    """One bound IndexShard deployment per shard of the index."""
    storage_dict = Storage(config.storage).resolved().model_dump(mode="json")
    shard = IndexShard.options  # type: ignore[attr-defined]  # @serve.deployment makes it a Deployment
    return [shard(name=f"IndexShard{s['shard']}{suffix}", max_ongoing_requests=_inner_limit(config),
                  autoscaling_config=_scaling(config, config.shard_replicas,
                                               config.shard_target_ongoing or config.max_inflight / 2),
                  ray_actor_options={"num_cpus": config.replica_cpus}, user_config={"nprobe": manifest["nprobe"]})
            .bind(config.index, s["shard"], storage_dict, config.cache_dir) for s in manifest["shards"]]


def build_shards_app(config: ServeConfig):
    """The shards application of `config.index` (for the "deployments" placement): one IndexShard deployment
    per shard. It is an application of its own, one per index version, so that moving the Router to another
    index (`switch`) leaves the shards the old Router replicas still ask untouched until they are gone."""
    return ShardSet.bind(*_shard_deployments(config, _read_index(config)[0]))  # type: ignore[attr-defined]


def build_app(config: ServeConfig, name: str = "xdr", *, shards_inside: bool = False):
    """The Router application `name` for a config (index manifest read once, here). With the "deployments"
    placement its Router asks the shard deployments of the application `shards_app_name(name, version)`,
    which must run (`start` and `switch` deploy it first); or, with `shards_inside` (`serve deploy`), shard
    deployments in this application, named after the index version."""
    storage = Storage(config.storage)
    storage_dict = storage.resolved().model_dump(mode="json")
    manifest, version = _read_index(config)
    encoder = config.encoder or EncoderConfig.model_validate(manifest["encoder"])
    replicas = {"num_cpus": config.replica_cpus}
    inner_limit, scaling = _inner_limit(config), _scaling

    encoder_arg = {"encoder": encoder.model_dump(mode="json"), "storage": storage_dict}  # the Router encodes
    if config.separate_encoder:
        encoder_arg = QueryEncoder.options(  # type: ignore[attr-defined]  # @serve.deployment makes it a Deployment
            autoscaling_config=scaling(config, config.encoder_replicas, config.encoder_batch_size / 2),
            max_ongoing_requests=inner_limit, ray_actor_options=replicas,
        ).bind(encoder_arg, config.encoder_batch_size, config.encoder_batch_wait_s)
    in_router = shards_fit_router(config, manifest)
    shards: dict | list
    if in_router:
        shards = {"index_root": config.index, "storage": storage_dict, "cache_dir": config.cache_dir}
    elif shards_inside:
        shards = _shard_deployments(config, manifest, suffix=f"-{version}")
    else:
        shards = {"app": shards_app_name(name, version), "count": len(manifest["shards"])}
    info = {"index": config.index, "version": version, "factory": manifest["factory"], "dim": manifest["dim"],
            "vectors": manifest["vectors"], "shards": len(manifest["shards"]), "nprobe": manifest["nprobe"],
            "shard_placement": "router" if in_router else "deployments",
            "source_run": manifest["source_run"], "encoder": encoder.model, "pooling": encoder.pooling}
    limits = {"max_queries": config.max_queries, "max_query_chars": config.max_query_chars,
              "max_k": config.max_k, "max_nprobe": manifest["nlist"], "max_inflight": config.max_inflight,
              "retry_after_s": config.retry_after_s, "batch_size": config.encoder_batch_size,
              "batch_wait_s": config.encoder_batch_wait_s, "retry_s": config.replica_retry_s}
    # The slots above max_inflight let /healthz, /info and the quick 503s through while searches run;
    # Serve's own queue limit is the backstop should the Router replicas be saturated anyway.
    router = Router.options(  # type: ignore[attr-defined]
        ray_actor_options=replicas, autoscaling_config=scaling(config, config.router_replicas, config.max_inflight / 2),
        max_ongoing_requests=config.max_inflight + 32, max_queued_requests=config.max_inflight,
        user_config={"nprobe": manifest["nprobe"]} if in_router else None,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s))
    return router.bind(encoder_arg, shards, limits, info, read_token(config))


def app_builder(args: dict[str, Any]):
    """Entry point for `serve deploy` / `serve run`: the application's `args` are a ServeConfig. The shard
    deployments, when used, are in the same application (a YAML names one application); `xdr serve-switch`
    then moves it to another index as it moves `xdr serve`'s."""
    return build_app(ServeConfig.model_validate(args), shards_inside=True)


def _uses_shard_deployments(config: ServeConfig) -> bool:
    return not shards_fit_router(config, _read_index(config)[0])


def start(config: ServeConfig, *, name: str = "xdr", route_prefix: str = "/") -> str:
    """Run the application `name` (and its shards application) on the connected Ray; returns the base URL."""
    serve.start(http_options={"host": config.host, "port": config.port,
                              "request_timeout_s": config.request_timeout_s})
    _, version = _read_index(config)
    if _uses_shard_deployments(config):
        serve.run(build_shards_app(config), name=shards_app_name(name, version), route_prefix=None)
    serve.run(build_app(config, name), name=name, route_prefix=route_prefix)
    return f"http://{config.host}:{config.port}"


def stop(name: str = "xdr") -> None:
    """Delete the application `name` and the shards applications it used."""
    apps = list(serve.status().applications)
    for app in [name] + [a for a in apps if a.startswith(f"{name}-shards-")]:
        if app in apps:
            serve.delete(app)


def switch(config: ServeConfig, *, name: str = "xdr", route_prefix: str = "/", timeout_s: float = 600) -> str:
    """Move the running application `name` to `config.index`; returns the new index version once nothing of
    the old version runs.

    1. With the "deployments" placement, the new version's shards application starts beside the old one.
    2. The Router application is redeployed: Serve starts the new Router replicas, routes new requests to
       them once healthy, and lets each old replica finish the requests it holds before it stops.
    3. When no old Router replica is left, the old shards application is deleted.
    A request is answered by one version from first shard to last: a Router only asks its own version's shards.
    """
    current = serve.get_app_handle(name).serving.remote().result()
    _, version = _read_index(config)
    if _uses_shard_deployments(config):
        serve.run(build_shards_app(config), name=shards_app_name(name, version), route_prefix=None)
    serve.run(build_app(config, name), name=name, route_prefix=route_prefix)  # returns once the new one is healthy
    deadline = time.monotonic() + timeout_s
    while waiting := _not_yet_switched(name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"old replicas of {name} still run {timeout_s:.0f} s after the switch: {waiting}")
        time.sleep(0.2)
    old_shards = shards_app_name(name, current["version"])
    if current["version"] != version and old_shards in serve.status().applications:
        serve.delete(old_shards)
    return version


def _not_yet_switched(name: str) -> list[str]:
    """The Router application's deployments still updating or with a replica in any state but RUNNING (an
    old replica stopping finishes the requests it holds)."""
    status = serve.status().applications.get(name)
    if status is None:
        return [f"no application {name!r}"]
    return [f"{d}: {s.status} {dict(s.replica_states)}" for d, s in status.deployments.items()
            if s.status != "HEALTHY" or set(s.replica_states) - {"RUNNING"}]
