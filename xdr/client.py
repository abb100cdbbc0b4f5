"""A small HTTP client for the search endpoint (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


class SearchError(RuntimeError):
    pass


def search(url: str, queries: list[str], *, k: int = 10, nprobe: int | None = None, return_text: bool = False,
           token: str | None = None, timeout_s: float = 60) -> list[list[dict]]:
    """POST /search; returns per query the ranked hits ({id, score[, title, text]})."""
    body = {"queries": queries, "k": k, "return_text": return_text}
    if nprobe is not None:
        body["nprobe"] = nprobe
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url.rstrip('/')}/search", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())["results"]
    except urllib.error.HTTPError as err:
        raise SearchError(f"{url} answered {err.code}: {err.read().decode(errors='replace')}") from None


def format_hits(query: str, hits: list[dict], width: int = 90) -> str:
    lines = [f"? {query}"]
    for rank, hit in enumerate(hits, 1):
        label = hit.get("title") or ""
        text = (hit.get("text") or "")[: max(0, width - len(label) - 30)]
        lines.append(f"  {rank:>2}. {hit['score']:8.4f}  {hit['id']}  {label}  {text}".rstrip())
    return "\n".join(lines)
