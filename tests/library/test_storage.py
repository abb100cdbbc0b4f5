import hashlib
import os

import pyarrow as pa
import pytest

from xdr.io.storage import Storage


def test_local_write_is_atomic_and_leaves_no_temporary(tmp_path):
    storage = Storage()
    record = storage.write_bytes(str(tmp_path / "a" / "b.bin"), b"hello")
    assert (record.bytes, record.sha256) == (5, hashlib.sha256(b"hello").hexdigest())
    assert os.listdir(tmp_path / "a") == ["b.bin"]
    (tmp_path / "a" / ".c.bin.tmp-123").write_bytes(b"partial")  # what a killed writer leaves
    assert storage.list_files(str(tmp_path / "a")) == [str(tmp_path / "a" / "b.bin")]
    assert storage.remove_stale_temporaries(str(tmp_path)) == 1
    assert storage.record(str(tmp_path / "a" / "b.bin")) == record


def test_expand_file_folder_glob_and_missing(tmp_path):
    for name in ("x/1.jsonl", "x/2.tsv", "x/sub/3.jsonl", "x/_hidden/4.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    storage = Storage()
    base = tmp_path / "x"
    assert storage.expand(str(base)) == [str(base / n) for n in ("1.jsonl", "2.tsv", "sub/3.jsonl")]
    assert storage.expand(str(base / "*.jsonl")) == [str(base / "1.jsonl")]
    assert storage.expand(str(base / "**" / "*.jsonl")) == [str(base / "1.jsonl"), str(base / "sub/3.jsonl")]
    assert storage.expand(str(base / "[12].*")) == [str(base / "1.jsonl"), str(base / "2.tsv")]
    assert storage.expand(f"file://{base}/2.tsv") == [str(base / "2.tsv")]
    assert storage.expand(str(tmp_path / "nothing")) == []


@pytest.mark.slow
def test_s3_round_trip_listing_and_glob(s3_server):
    storage = Storage()
    bucket = s3_server.bucket
    table = pa.table({"id": ["a", "b"]})
    record = storage.write_table(f"s3://{bucket}/st/p/part-00000.parquet", table)
    storage.write_bytes(f"s3://{bucket}/st/p/notes.txt", b"x")
    assert storage.read_table(record.uri) == table
    assert storage.exists(record.uri) and not storage.exists(f"s3://{bucket}/st/p/missing")
    assert storage.list_files(f"s3://{bucket}/st/p") == [f"s3://{bucket}/st/p/notes.txt", record.uri]
    assert storage.expand(f"s3://{bucket}/st/p/*.parquet") == [record.uri]
    body = s3_server.client().get_object(Bucket=bucket, Key="st/p/part-00000.parquet")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == record.sha256
