"""s3:// model folders are copied once per machine into the model cache and loaded from there."""

from pathlib import Path

import pytest

from xdr.io.storage import Storage
from xdr.models.files import local_model


def _put(s3_server, key: str, body: bytes) -> None:
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=body)


def test_an_s3_folder_is_copied_once_and_again_when_it_changes(s3_server, tmp_path):
    _put(s3_server, "models/m1/config.json", b'{"a": 1}')
    _put(s3_server, "models/m1/sub/weights.bin", b"\x00\x01" * 1000)
    uri, cache = f"s3://{s3_server.bucket}/models/m1", tmp_path / "cache"
    first = local_model(uri, Storage(), cache_dir=cache)
    assert (cache / first.rsplit("/", 1)[-1]).is_dir()
    copied = {p.relative_to(first).as_posix(): p.read_bytes() for p in Path(first).rglob("*")
              if p.is_file()}
    assert copied == {"config.json": b'{"a": 1}', "sub/weights.bin": b"\x00\x01" * 1000}
    marker = cache / first.rsplit("/", 1)[-1] / "config.json"
    marker.write_bytes(b"edited locally")  # a second call must not copy again
    assert local_model(uri, Storage(), cache_dir=cache) == first and marker.read_bytes() == b"edited locally"

    _put(s3_server, "models/m1/config.json", b'{"a": 2, "retrained": true}')
    second = local_model(uri, Storage(), cache_dir=cache)
    assert second != first and (cache / second.rsplit("/", 1)[-1] / "config.json").read_bytes().startswith(b'{"a": 2')
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "no staging folder is left behind"


def test_local_names_pass_through_and_bad_s3_names_say_why(s3_server, tmp_path):
    assert local_model("usem3") == "usem3" and local_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist or is empty"):
        local_model(f"s3://{s3_server.bucket}/models/none", Storage(), cache_dir=tmp_path)
    _put(s3_server, "models/file.bin", b"x")
    with pytest.raises(ValueError, match="is a file"):
        local_model(f"s3://{s3_server.bucket}/models/file.bin", Storage(), cache_dir=tmp_path)
