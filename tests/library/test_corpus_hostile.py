"""Hostile corpus input: every reader (TSV, JSON lines, Parquet, gzip, S3) meets rows an attacker or a broken
export would write. The job never dies of a row: each bad row is rejected with its own reason, each good row
is kept exactly, and the counts add up."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.passages import checked_without_digest
from xdr.config import CorpusConfig
from xdr.ingest.corpus import reason_kind
from xdr.ingest.validation import validate_corpus
from xdr.io.storage import Storage


def _prepare(tmp_path, path, **kw):
    run = tmp_path / "run"
    summary = validate_corpus(Storage(), CorpusConfig(path=str(path), **{"max_reject_fraction": 1.0, **kw}), str(run))
    passages = checked_without_digest(pq.read_table(run / "passages").to_pylist())
    rejects = pq.read_table(run / "rejects").to_pylist()
    assert summary.rows_read == summary.passages + summary.rejects == len(passages) + len(rejects)
    return passages, {r["line"]: r["reason"] for r in rejects}, summary


GOOD = b'{"id": "ok", "text": "a good passage"}'

# (raw JSON line, expected reason) -- one row per kind of trouble
JSONL_CASES = [
    (b'{"id": "s1", "text": "bad \\ud800 surrogate"}', "invalid Unicode: lone surrogate in text at character 4"),
    (b'{"id": "\\udfff", "text": "surrogate id"}', "invalid Unicode: lone surrogate in id at character 0"),
    (b'{"id": "s2", "text": "t", "title": "\\ud83d"}', "invalid Unicode: lone surrogate in title at character 0"),
    (b'{"id": {"a": 1}, "text": "object id"}', "id is not a string or integer: got object"),
    (b'{"id": ["x"], "text": "array id"}', "id is not a string or integer: got array"),
    (b'{"id": true, "text": "boolean id"}', "id is not a string or integer: got boolean"),
    (b'{"id": 1.5, "text": "float id"}', "id is not a string or integer: got number"),
    (b'{"id": "n1", "text": 42}', "text is not a string: got number"),
    (b'{"id": "n2", "text": ["a", "b"]}', "text is not a string: got array"),
    (b'{"id": "n3", "text": null}', "missing text"),
    (b'{"id": "n4"}', "missing text"),
    (b'{"id": "n5", "text": "t", "title": 7}', "title is not a string: got number"),
    (b'{"id": "n6", "text": "t", "lang": {"code": "fi"}}', "lang is not a string: got object"),
    (b'{"id": "z1", "text": "nul \\u0000 inside"}', "NUL character: in text at character 4"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid JSON: nested too deeply"),
    (b'{"id": "d1", "text": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, "invalid JSON: nested too deeply"),
    (b'"just a string"', "not a JSON object: got string"),
    (b"null", "not a JSON object: got null"),
    (b'{"id": "i1", "text": "x", "n": NaN', "invalid JSON: Expecting ',' delimiter"),
    (b"\xff\xfe\x00garbage", "invalid UTF-8: at byte 0"),
]


def test_each_kind_of_hostile_json_row_gets_its_own_reason(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\n".join([GOOD] + [line for line, _ in JSONL_CASES]) + b"\n")
    passages, reasons, summary = _prepare(tmp_path, path)
    assert [p["id"] for p in passages] == ["ok"]
    assert reasons == {i + 2: reason for i, (_, reason) in enumerate(JSONL_CASES)}
    # the summary counts kinds, not details
    assert summary.reject_reasons["invalid Unicode"] == 3
    assert summary.reject_reasons["invalid JSON"] == 3
    assert set(summary.reject_reasons) == {reason.partition(": ")[0] for _, reason in JSONL_CASES}
    assert sum(summary.reject_reasons.values()) == len(JSONL_CASES)


def test_ids_may_be_integers_and_text_keeps_control_characters_tabs_and_unicode(tmp_path):
    rows = [{"id": 12, "text": "tab\there, newline\nthere, bell \x07, emoji 🦀, RTL \u202e"},
            {"_id": "x", "text": "title null", "title": None, "lang": None},
            {"docid": "  padded  ", "text": "kept", "language": "fi"}]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    passages, reasons, _ = _prepare(tmp_path, path)
    assert reasons == {}
    assert passages == [{"id": "12", "title": "", "text": rows[0]["text"], "lang": "en"},
                        {"id": "x", "title": "", "text": "title null", "lang": "en"},
                        {"id": "padded", "title": "", "text": "kept", "lang": "fi"}]


def test_bom_crlf_and_blank_lines(tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"id": "a", "text": "first"}\r\n\r\n{"id": "b", "text": "second"}\r\n')
    passages, reasons, _ = _prepare(tmp_path / "j", jsonl)
    assert reasons == {} and [(p["id"], p["text"]) for p in passages] == [("a", "first"), ("b", "second")]

    tsv = tmp_path / "bom.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfid\ttext\ttitle\r\n1\tone\tOne\r\n2\ttwo\tTwo\r\n")
    passages, reasons, summary = _prepare(tmp_path / "t", tsv)
    assert reasons == {} and summary.rows_read == 2  # the header was recognised despite the BOM
    assert [(p["id"], p["text"], p["title"]) for p in passages] == [("1", "one", "One"), ("2", "two", "Two")]


def test_enormous_lines_are_rejected_without_being_held_and_neighbours_survive(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    huge = b'{"id": "huge", "text": "' + b"x" * 3_000_000 + b'"}'
    with gzip.open(path, "wb") as f:
        f.write(GOOD + b"\n" + huge + b"\n" + b'{"id": "after", "text": "still read"}\n' + b"y" * 2_500_000)
    passages, reasons, _ = _prepare(tmp_path, path, max_line_bytes=1_000_000)
    assert [p["id"] for p in passages] == ["ok", "after"]
    assert reasons == {2: f"line too long: {len(huge):,} bytes > corpus.max_line_bytes 1,000,000",
                       4: "line too long: 2,500,000 bytes > corpus.max_line_bytes 1,000,000"}


def test_tsv_nul_huge_field_and_unbalanced_quotes(tmp_path):
    path = tmp_path / "c.tsv"
    big = "w " * 100_000  # 200k characters: over csv's default field limit, under max_text_chars
    path.write_bytes("\n".join(["id\ttext\ttitle", "1\tnul \x00 here\tT", f"2\t{big}\tBig", '3\t"open quote\tT',
                                "4\tfine\tFine", "5\tcontrol \x1b[31m chars\tC"]).encode() + b"\n")
    passages, reasons, _ = _prepare(tmp_path, path, max_text_chars=300_000)
    # an unterminated quote swallows the tab that follows it, so the row has too few columns
    assert reasons == {2: "NUL character: in text at character 4", 4: "wrong column count: expected 3, got 2"}
    assert [p["id"] for p in passages] == ["2", "4", "5"]
    assert passages[0]["text"] == big and passages[2]["text"] == "control \x1b[31m chars"


def test_parquet_with_other_column_types_invalid_utf8_and_binary(tmp_path):
    strings = pa.Array.from_buffers(pa.string(), 3, pa.array([b"fine", b"\xffbad", b"ok too"]).buffers())
    table = pa.table({
        "id": pa.array([1, 2, 3], pa.int64()),
        "text": strings,
        "title": pa.array([b"binary title", b"t", b"\xfe"], pa.binary()),
        "lang": pa.array(["en", "en", "en"]),
    })
    path = tmp_path / "a.parquet"
    pq.write_table(table, path)
    passages, reasons, _ = _prepare(tmp_path, path)
    assert passages == [{"id": "1", "title": "binary title", "text": "fine", "lang": "en"}]
    assert reasons == {2: "invalid UTF-8: at byte 0 of a value", 3: "invalid UTF-8: title, at byte 0"}

    nested = pa.table({"id": pa.array([[1], [2]]), "text": pa.array([{"a": "x"}, {"a": "y"}]),
                       "title": pa.array([1.5, 2.5])})
    pq.write_table(nested, tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"no valid passage .*\{'id is not a string or integer': 2\}"):
        _prepare(tmp_path / "b", tmp_path / "b.parquet")

    no_text = pa.table({"id": ["a", "b"], "body": ["x", "y"]})
    pq.write_table(no_text, tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"2 of 2 rows rejected.*'missing text': 2|no valid passage.*missing text"):
        validate_corpus(Storage(), CorpusConfig(path=str(tmp_path / "c.parquet")), str(tmp_path / "c"))


def test_broken_files_fail_naming_the_file_not_a_row(tmp_path):
    data = gzip.compress(b"".join(b'{"id": "%d", "text": "t"}\n' % i for i in range(50_000)))
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"t\.jsonl\.gz: reading failed after line \d+ .*fix or remove the file"):
        _prepare(tmp_path / "t", truncated)
    fake = tmp_path / "f.parquet"
    fake.write_bytes(b"not parquet" * 10)
    with pytest.raises(ValueError, match=r"f\.parquet: not a readable Parquet file"):
        _prepare(tmp_path / "f", fake)


@pytest.mark.slow
def test_hostile_rows_on_s3_through_the_whole_job(ray_local, s3_server, tiny_models):
    """The original crash: a lone surrogate killed the job when the passages part was written."""
    from ray_jobs.index_corpus import run_indexing
    from tests.support.jobs import make_config

    client, bucket = s3_server.client(), s3_server.bucket
    good = [{"id": f"g{i}", "text": f"passage number {i}"} for i in range(6)]
    lines = [json.dumps(r).encode() for r in good] + [line for line, _ in JSONL_CASES[:8]]
    client.put_object(Bucket=bucket, Key="hostile/c.jsonl.gz", Body=gzip.compress(b"\n".join(lines)))
    config = make_config(tiny_models, f"s3://{bucket}/hostile/c.jsonl.gz", f"s3://{bucket}/hostile/run",
                         corpus={"max_reject_fraction": 0.9})
    manifest = run_indexing(config)
    counts = manifest["counts"]
    assert (counts["passages"], counts["rejects"], counts["embeddings"]) == (6, 8, 6)
    assert counts["reject_reasons"] == {"invalid Unicode": 3, "id is not a string or integer": 4,
                                        "text is not a string": 1}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(
    st.binary(max_size=80),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                 lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
                     st.sampled_from(["id", "text", "title", "lang", "docid"]), kids, max_size=4),
                 max_leaves=8).map(lambda v: json.dumps(v).encode())), max_size=12))
def test_fuzzed_json_lines_never_crash_the_reader(tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "c.jsonl"
    path.write_bytes(GOOD + b"\n" + b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    passages, reasons, summary = _prepare(tmp, path)
    assert passages[0]["id"] == "ok"
    assert all(reason_kind(r) in summary.reject_reasons for r in reasons.values())
    for p in passages:  # what was kept can be written and read back as UTF-8
        assert all(isinstance(v, str) and isinstance(v.encode("utf-8"), bytes) for v in p.values())
