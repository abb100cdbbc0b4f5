"""What xdr adds to Ray Serve's HTTP proxy: a request whose replica died before answering gets 503 with
Retry-After instead of the bare 500 the proxy sends (Ray maps a dead replica, `RayActorError`, to 500 with
no body). A search is idempotent, so "come back in a second" is the true answer: the controller is
already starting a replacement.

Serve loads proxy middlewares from the import path in RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, read
when the proxy process starts: `xdr serve` sets it, with the settings of the chosen ingress
(`ingress_env`), before it starts its local Ray; on a cluster the image sets them (cluster/Dockerfile).
This module imports nothing heavy: it is loaded into the proxy process.
"""

from __future__ import annotations

import os

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "ray_jobs.serve_proxy:proxy_middlewares"
RETRY_AFTER_ENV = "XDR_SERVE_RETRY_AFTER_S"


class LostReplicaAs503:
    """ASGI middleware: when the wrapped app (Serve's proxy) returns without starting a response, which it
    does only when it could not get one from a replica, answer 503 with Retry-After."""

    def __init__(self, app, retry_after_s: int = 1):
        self.app, self.retry_after = app, str(retry_after_s).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, receive, watched_send)
        if not started:
            body = b'{"detail":"the replica answering this request stopped; retry"}'
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", self.retry_after),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list:
    """The callback Serve's proxy calls at start-up."""
    from starlette.middleware import Middleware

    return [Middleware(LostReplicaAs503, retry_after_s=int(os.environ.get(RETRY_AFTER_ENV, "1")))]


def ingress_env(ingress: str, retry_after_s: int = 1) -> dict[str, str]:
    """Serve's settings for an ingress kind (ServeConfig.ingress). Serve reads them when its processes
    start, so they go into the environment of the Ray that runs it."""
    env = {CALLBACK_ENV: CALLBACK, RETRY_AFTER_ENV: str(retry_after_s)}
    if ingress == "haproxy":
        env.update({
            # HAProxy on the HTTP port, forwarding to an HTTP server in each ingress replica (no Python
            # proxy hop); user code on the replica's main event loop; gRPC between deployments
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
            # Serve holds a stopping ingress replica open this long so that an outer load balancer can
            # deregister it (default 30 s: why every shutdown with these settings outlasted 30 s)
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
            # a search is idempotent: a request whose replica closed the connection without an answer (it
            # died) is replayed on another replica instead of failing
            "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
        })
    return env


def configure_ingress(ingress: str = "proxy", retry_after_s: int = 1) -> None:
    """Set Serve's settings for a Ray this process is about to start (settings already given are kept)."""
    for name, value in ingress_env(ingress, retry_after_s).items():
        os.environ.setdefault(name, value)
