import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.passages import checked_without_digest
from xdr.config import CorpusConfig
from xdr.ingest.corpus import detect_format
from xdr.ingest.validation import validate_corpus
from xdr.io.storage import Storage


def _jsonl(path, rows, raw_lines=()):
    with open(path, "wb") as f:
        for row in rows:
            f.write(json.dumps(row).encode() + b"\n")
        for line in raw_lines:
            f.write(line + b"\n")
    return path


def _read(run, stage):
    rows = pq.read_table(f"{run}/{stage}").to_pylist() if (run / stage).exists() else []
    return checked_without_digest(rows) if stage == "passages" else rows


def _prepare(tmp_path, path, **kw):
    run = tmp_path / "run"
    cfg = CorpusConfig(path=str(path), **{"max_reject_fraction": 1.0, **kw})
    return run, validate_corpus(Storage(), cfg, str(run))


def test_every_kind_of_bad_jsonl_row_is_rejected_with_line_and_reason(tmp_path):
    good = [{"id": "a", "title": "A", "text": "alpha"}, {"docid": 7, "text": "beta", "lang": "fi"}]
    raw = [b'{"id": "c", "text": ""}',            # line 3: empty text
           b'{"title": "no id", "text": "x"}',    # line 4: missing id
           b'{"id": "a", "text": "again"}',       # line 5: duplicate id
           b'{"id": "d", "text": "' + b"x" * 50 + b'"}',  # line 6: too long
           b'{"id": "e", "text": broken',         # line 7: invalid JSON
           b'["a", "list"]',                      # line 8: not an object
           b'{"id": "f", "text": "caf\xe9"}']     # line 9: invalid UTF-8 (latin-1 byte)
    path = _jsonl(tmp_path / "c.jsonl", good, raw)
    run, summary = _prepare(tmp_path, path, max_text_chars=40)
    rejects = _read(run, "rejects")
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert set(reasons) == {3, 4, 5, 6, 7, 8, 9}
    assert reasons[3] == "empty text" and reasons[4] == "missing id"
    assert reasons[5] == f"duplicate id: first seen at {path}:1"
    assert reasons[6] == "text too long: 50 characters > corpus.max_text_chars 40"
    assert reasons[7].startswith("invalid JSON: ") and reasons[8] == "not a JSON object: got array"
    assert reasons[9] == "invalid UTF-8: at byte 24"  # the é byte
    assert all(r["source"] == str(path) and r["excerpt"] for r in rejects)
    passages = _read(run, "passages")
    assert passages == [{"id": "a", "title": "A", "text": "alpha", "lang": "en"},
                        {"id": "7", "title": "", "text": "beta", "lang": "fi"}]
    assert (summary.rows_read, summary.passages, summary.rejects) == (9, 2, 7)
    assert summary.reject_reasons["duplicate id"] == 1


def test_dpr_tsv_with_header_quotes_and_wrong_column_count(tmp_path):
    path = tmp_path / "psgs.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        f.write('1\t"Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n')
        f.write("2\tonly two columns\n")
        f.write("3\tThe third passage\tThird\n")
    run, summary = _prepare(tmp_path, path)
    assert [(p["id"], p["title"], p["text"]) for p in _read(run, "passages")] == [
        ("1", "Aaron", 'Aaron ( or ; "Ahärôn") is a prophet'), ("3", "Third", "The third passage")]
    assert [(r["line"], r["reason"]) for r in _read(run, "rejects")] == [(3, "wrong column count: expected 3, got 2")]


def test_parquet_folder_and_glob_inputs(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["x1", "x2"], "title": ["", "t"], "text": ["one", "two"]}), folder / "a.parquet")
    _jsonl(folder / "b.jsonl", [{"id": "x3", "text": "three"}])
    (folder / "_SUCCESS").write_text("")  # hidden names are skipped
    run, summary = _prepare(tmp_path, folder)
    assert [p["id"] for p in _read(run, "passages")] == ["x1", "x2", "x3"]
    run2, _ = _prepare(tmp_path / "g", str(folder / "*.jsonl"))
    assert [p["id"] for p in _read(run2, "passages")] == ["x3"]


def test_parts_are_cut_by_valid_rows_and_resume_keeps_committed_files(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"id": str(i), "text": f"t{i}"} for i in range(10)], [b"{bad"])
    run, summary = _prepare(tmp_path, path, passages_per_part=4)
    assert [p.passages for p in summary.parts] == [4, 4, 2]
    assert [p.rejects for p in summary.parts] == [0, 0, 1]
    first = (run / "passages" / "part-00000.parquet").stat().st_mtime_ns
    (run / "passages" / "part-00002.parquet").unlink()  # as if killed before the last commit
    _, again = _prepare(tmp_path, path, passages_per_part=4)
    assert (run / "passages" / "part-00000.parquet").stat().st_mtime_ns == first
    assert [f.sha256 for p in again.parts for f in p.files] == [f.sha256 for p in summary.parts for f in p.files]


def test_too_many_rejects_fail_with_counts_and_where_to_look(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "ok"}], [b"{bad", b'{"id": "b"}'])
    with pytest.raises(ValueError, match=r"2 of 3 rows rejected .* > corpus.max_reject_fraction 50.00%.*rejects"):
        validate_corpus(Storage(), CorpusConfig(path=str(path), max_reject_fraction=0.5), str(tmp_path / "run"))
    with pytest.raises(ValueError, match="no valid passage"):
        _prepare(tmp_path, _jsonl(tmp_path / "bad.jsonl", [], [b"{bad"]))
    with pytest.raises(ValueError, match="names no files"):
        _prepare(tmp_path, tmp_path / "missing.jsonl")


def test_format_detection():
    assert detect_format("s3://b/psgs_w100.tsv.gz") == "tsv"
    assert detect_format("x.json") == "jsonl" and detect_format("x.parquet") == "parquet"
    assert detect_format("x.txt", "tsv") == "tsv"
    with pytest.raises(ValueError, match="set corpus.format"):
        detect_format("x.txt")
