"""Parallel validation (units, hash-partitioned duplicates, parts cut from many tasks) against the
single reader it replaced: the same part files byte for byte, the same counts, in one process, on Ray
with one and with two CPUs, locally and on S3."""

import gzip
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_jobs.tasks import RayTasks
from tests.support.reference_validation import single_reader_parts
from xdr.config import CorpusConfig
from xdr.ingest.corpus import LinesInRange, split_lines
from xdr.ingest.validation import plan_units, validate_corpus
from xdr.io.storage import Storage


def _jsonl_bytes(rows):
    return b"".join((r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()) + b"\n" for r in rows)


def _write_corpus(put) -> None:
    """Four files with every kind of row, duplicates inside and across files; `put(name, bytes)`."""
    rng = random.Random(7)
    words = ["alpha", "βήτα", "гамма", "דלתא", "エプシロン", "zeta", "eta"]

    def text(i):
        return " ".join(rng.choice(words) for _ in range(3 + i % 9))

    a = [b"\xef\xbb\xbf" + json.dumps({"id": "a0", "text": text(0)}).encode()]
    for i in range(1, 60):
        a.append({"id": f"a{i}", "title": f"A{i}", "text": text(i), **({"lang": "fi"} if i % 5 == 0 else {})})
        if i % 11 == 0:
            a.append({"id": f"a{i - 3}", "text": "duplicate inside the file"})
        if i % 13 == 0:
            a.append(b"")  # blank line
    a += [b'{"id": "bad", "text": ""}', b'{"title": "no id", "text": "x"}', b'{"id": "e", "text": broken',
          b'["a", "list"]', b'{"id": "f", "text": "caf\xe9"}', b'{"id": "g", "text": "\\ud800"}',
          b'{"id": "h", "text": "nul \\u0000"}', b'{"id": 1.5, "text": "float id"}',
          b'{"id": "long", "text": "' + b"x" * 900 + b'"}',
          b'{"id": "crlf", "text": "windows line"}\r', b'{"id": "tail", "text": "last line"}']
    put("a.jsonl", _jsonl_bytes(a))
    b = ["id\ttitle\ttext"] + [f"b{i}\tB{i}\t{text(i)}" for i in range(45)]
    b[10] = "a5\tdup\tduplicate of a file before"
    b[20] = "b19\tonly two columns"
    b[30] = '"b29\tT\tunterminated quote'
    put("b.tsv", "\n".join(b).encode() + b"\n\n")
    c = [{"id": f"c{i}", "text": text(i)} for i in range(30)] + [{"id": "b3", "text": "duplicate across files"},
                                                                  {"id": "c2", "text": "duplicate in gzip"}]
    put("c.jsonl.gz", gzip.compress(_jsonl_bytes(c), mtime=0))
    d = [{"id": f"d{i}", "title": None, "text": text(i)} for i in range(40)]
    d[7]["text"] = None
    d[9]["id"] = "a1"
    d[15]["title"] = "   "
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(d), buffer, row_group_size=6)
    put("d.parquet", buffer.getvalue())


# rows: a.jsonl 60 + 5 duplicates + 11 special lines (blank lines are not rows), b.tsv 45, c.jsonl.gz 32,
# d.parquet 40 = 193; rejected, by reason:
HAND_COUNTED_REASONS = {
    "duplicate id": 9,  # 5 inside a.jsonl (i = 11, 22, .., 55), a5 in b.tsv, b3 and c2 in the gzip, a1 in d.parquet
    "empty text": 1, "missing id": 1, "invalid JSON": 1, "not a JSON object": 1, "invalid UTF-8": 1,
    "invalid Unicode": 1, "NUL character": 1, "id is not a string or integer": 1, "line too long": 1,  # a.jsonl's
    "wrong column count": 2,  # b.tsv's b19 (two columns) and b29 (an unterminated quote eats the tabs)
    "missing text": 1,  # d.parquet's d7
}
HAND_LISTED_IDS = ([f"a{i}" for i in range(60)] + ["crlf", "tail"]  # 172 = 193 - 21
                   + [f"b{i}" for i in range(45) if i not in (9, 19, 29)]  # b9's line is the a5 duplicate
                   + [f"c{i}" for i in range(30)] + [f"d{i}" for i in range(40) if i not in (7, 9)])


def _read_passages(storage: Storage, run: str) -> dict[str, dict]:
    rows = [row for f in sorted(storage.list_files(f"{run}/passages"))
            for row in pq.read_table(io.BytesIO(storage.read_bytes(f))).to_pylist()]
    assert len(rows) == len({r["id"] for r in rows}), "an id in two parts"
    return {r["id"]: r for r in rows}


def _config(path, **kw):
    return CorpusConfig(path=path, passages_per_part=7, max_reject_fraction=1.0, max_line_bytes=600,
                        max_text_chars=500, **kw)


def _part_bytes(storage: Storage, run: str) -> dict[str, bytes]:
    files = storage.list_files(f"{run}/passages") + storage.list_files(f"{run}/rejects")
    return {f[len(run):]: storage.read_bytes(f) for f in files}


def _assert_same_as_single_reader(storage, corpus, root, executor, progress=None):
    config = _config(corpus, split_bytes=400)
    units, _ = plan_units(storage, config)
    assert len(units) > 8, "the test corpus must be split into byte ranges"
    expected = single_reader_parts(storage, config, f"{root}/single")
    summary = validate_corpus(storage, config, f"{root}/parallel", executor, progress=progress)
    assert (summary.rows_read, summary.passages, summary.rejects, dict(summary.reject_reasons), len(summary.parts)) \
        == (expected["rows_read"], expected["passages"], expected["rejects"], expected["reject_reasons"],
            expected["parts"])
    # worked out from _write_corpus by hand, so that the parser, which the single reader shares, is checked too
    assert (summary.rows_read, summary.passages, dict(summary.reject_reasons)) == (193, 172, HAND_COUNTED_REASONS)
    want, got = _part_bytes(storage, f"{root}/single"), _part_bytes(storage, f"{root}/parallel")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
    passages = _read_passages(storage, f"{root}/parallel")
    assert sorted(passages) == sorted(HAND_LISTED_IDS)
    assert passages["crlf"]["text"] == "windows line" and passages["b3"]["title"] == "B3"
    assert not storage.list_files(f"{root}/parallel/_staging"), "staging files left behind"
    return summary


def test_in_one_process_the_parts_equal_the_single_readers(tmp_path):
    _write_corpus(lambda name, data: (tmp_path / "corpus").mkdir(exist_ok=True) or
                  (tmp_path / "corpus" / name).write_bytes(data))
    _assert_same_as_single_reader(Storage(), str(tmp_path / "corpus"), str(tmp_path), None)


def test_in_batches_of_five_rows_and_in_one_unit_a_file_the_counts_and_parts_are_the_same(tmp_path, monkeypatch):
    """The row batches a unit is staged and cut in (8,192 rows) and the byte ranges it is split into must not
    change the result: batches of 5 rows, then one unit a file, against the hand counts and the single reader."""
    from xdr.ingest import validation

    small = validation.iter_batches
    monkeypatch.setattr(validation, "BATCH_ROWS", 5)
    monkeypatch.setattr(validation, "iter_batches", lambda storage, uri: small(storage, uri, batch_size=5))
    (tmp_path / "corpus").mkdir()
    _write_corpus(lambda name, data: (tmp_path / "corpus" / name).write_bytes(data))
    said: list[str] = []
    _assert_same_as_single_reader(Storage(), str(tmp_path / "corpus"), str(tmp_path), None, progress=said.append)
    units = len(plan_units(Storage(), _config(str(tmp_path / "corpus"), split_bytes=400))[0])
    assert said[-1] == f"validated {units}/{units} units, 193 rows", said  # progress counts every row once
    whole = validate_corpus(Storage(), _config(str(tmp_path / "corpus"), split_bytes=1 << 30), str(tmp_path / "whole"))
    assert (whole.rows_read, whole.passages, dict(whole.reject_reasons)) == (193, 172, HAND_COUNTED_REASONS)
    assert _part_bytes(Storage(), str(tmp_path / "whole")) == _part_bytes(Storage(), str(tmp_path / "parallel"))


def test_a_rerun_restores_the_whole_summary_and_names_at_most_five_changes(tmp_path, monkeypatch):
    """Validation committed once is read back whole (rows read and source files too); a corpus changed in
    seven ways is refused with five named and the rest counted; nothing is written outside the run folder."""
    corpus, run = tmp_path / "corpus", str(tmp_path / "run")
    corpus.mkdir()
    _write_corpus(lambda name, data: (corpus / name).write_bytes(data))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # a path that lost its run folder would land here
    config = _config(str(corpus), split_bytes=400)
    first = validate_corpus(Storage(), config, run)
    again = validate_corpus(Storage(), config, run)
    assert not first.resumed and again.resumed
    assert (again.rows_read, again.passages, again.rejects, again.reject_reasons, again.source_files, again.parts) \
        == (first.rows_read, first.passages, first.rejects, first.reject_reasons, first.source_files, first.parts)
    assert list((tmp_path / "cwd").iterdir()) == []
    for i in range(6):
        (corpus / f"new{i}.jsonl").write_text('{"id": "n", "text": "t"}\n')
    (corpus / "b.tsv").write_bytes((corpus / "b.tsv").read_bytes() + b"b99\tB\tmore\n")
    with pytest.raises(ValueError) as refused:
        validate_corpus(Storage(), config, run)
    said = str(refused.value)
    assert said.startswith("the corpus changed since this run validated it: ") and said.count("; ") == 4, said
    assert said.endswith(" (and 2 more). Resume it with the same corpus, or choose a new output folder."), said


@pytest.mark.parametrize("cpus_per_task", [2, 1], ids=["one-task-at-a-time", "two-at-once"])
def test_on_ray_the_parts_equal_the_single_readers(ray_local, tmp_path, cpus_per_task):
    (tmp_path / "corpus").mkdir()
    _write_corpus(lambda name, data: (tmp_path / "corpus" / name).write_bytes(data))
    _assert_same_as_single_reader(Storage(), str(tmp_path / "corpus"), str(tmp_path),
                                  RayTasks(cpus_per_task=cpus_per_task))


def test_on_s3_the_parts_equal_the_single_readers(ray_local, s3_server, tmp_path):
    storage = Storage()
    root = f"s3://{s3_server.bucket}/{tmp_path.name}"
    _write_corpus(lambda name, data: storage.write_bytes(f"{root}/corpus/{name}", data))
    _assert_same_as_single_reader(storage, f"{root}/corpus", root, RayTasks())


def test_a_rerun_reads_the_committed_validation_and_refuses_a_changed_corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    _write_corpus(lambda name, data: (tmp_path / "corpus" / name).write_bytes(data))
    config, run = _config(str(tmp_path / "corpus"), split_bytes=400), str(tmp_path / "run")
    validate_corpus(Storage(), config, run)
    (tmp_path / "corpus" / "b.tsv").unlink()  # were the corpus read again, this would change the parts
    with pytest.raises(ValueError, match="corpus changed.*b.tsv removed"):
        validate_corpus(Storage(), config, run)
    _write_corpus(lambda name, data: (tmp_path / "corpus" / name).write_bytes(data) if name == "b.tsv" else None)
    with pytest.raises(ValueError, match="b.tsv changed"):  # same bytes, new modification time
        validate_corpus(Storage(), config, run)
    (tmp_path / "corpus" / "extra.jsonl").write_text('{"id": "x", "text": "y"}\n')
    with pytest.raises(ValueError, match="extra.jsonl added"):
        validate_corpus(Storage(), config, run)


def test_a_rerun_does_not_validate_again(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    _write_corpus(lambda name, data: (tmp_path / "corpus" / name).write_bytes(data))
    config, run = _config(str(tmp_path / "corpus"), split_bytes=400), str(tmp_path / "run")
    first = validate_corpus(Storage(), config, run)
    import xdr.ingest.validation

    monkeypatch.setattr(xdr.ingest.validation, "validate_unit", None)  # any validation would now fail
    again = validate_corpus(Storage(), config, run)
    assert again.resumed and not first.resumed
    assert (again.passages, again.rejects, again.reject_reasons, again.parts) == \
        (first.passages, first.rejects, first.reject_reasons, first.parts)


def test_byte_ranges_cut_anywhere_give_every_line_to_exactly_one_range(tmp_path):
    rng = random.Random(3)
    lines = [rng.choice([b"", b"x" * rng.randint(1, 40), b"crlf line\r", "é ü".encode()]) for _ in range(300)]
    data = b"\n".join(lines) + rng.choice([b"", b"\n"])
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    whole = list(split_lines(io.BytesIO(data), max_line_bytes=1 << 20))
    for _ in range(40):
        cuts = sorted({0, len(data), *rng.sample(range(1, len(data)), rng.randint(1, 30))})
        got = []
        for start, end in zip(cuts, cuts[1:]):
            with open(path, "rb") as f:
                got += list(split_lines(LinesInRange(f, start, end), max_line_bytes=1 << 20))
        assert got == whole, cuts
