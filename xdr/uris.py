"""Storage URIs as strings: local paths, file:// and s3://. A leaf module: the config and the storage
layer both build URIs, and neither needs the other to do it."""

from __future__ import annotations


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")
