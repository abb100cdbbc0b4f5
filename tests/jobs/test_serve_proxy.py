"""The proxy middleware alone (no Ray): what it does to an answer, and to a request left unanswered."""

import asyncio

from ray_jobs.serve_proxy import LostReplicaAs503, ingress_env


def _call(app, scope_type: str = "http") -> list[dict]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.disconnect"}

    asyncio.run(LostReplicaAs503(app, retry_after_s=7)({"type": scope_type}, receive, send))
    return sent


def test_an_answer_passes_unchanged():
    async def answering(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"a server error of the app's own"})

    assert [m.get("status") for m in _call(answering)] == [500, None]


def test_a_request_left_unanswered_gets_503_with_retry_after():
    async def replica_died(scope, receive, send):  # Serve's proxy sends nothing when the replica died
        return None

    start, body = _call(replica_died)
    assert start["status"] == 503 and (b"retry-after", b"7") in start["headers"]
    assert b"retry" in body["body"] and dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()
    assert _call(replica_died, "websocket") == []  # only HTTP


def test_the_haproxy_ingress_replays_only_what_a_dead_replica_left():
    env = ingress_env("haproxy")
    assert env["RAY_SERVE_HAPROXY_RETRY_ON"].split() == ["conn-failure", "empty-response"]
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in ingress_env("proxy")
