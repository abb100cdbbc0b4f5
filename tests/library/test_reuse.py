"""Reuse by content (xdr.pipeline.reuse): a new corpus version indexed with reuse_from equals a run from
scratch, and only the changed and new passages reach the models. In process, with the stand-in models,
whose outputs are pure functions of a passage, so that equality is byte for byte."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from benchmarks.synthetic_corpus import write_corpus, write_next_version
from tests.support.pipeline import index_here
from xdr.config import IndexingJobConfig
from xdr.pipeline import reuse as reuse_module


def _config(corpus, output, **fields) -> IndexingJobConfig:
    return IndexingJobConfig.model_validate({
        "output": str(output), "corpus": {"path": str(corpus), "passages_per_part": 50, "max_reject_fraction": 0.1},
        "generator": {"model": "stand-in:lead-words", "languages": ["ar", "fi"], "queries_per_language": 2},
        "encoder": {"model": "stand-in:hashing-64"}, "fusion": {"alpha": 0.3}, **fields})


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Version 1 indexed, version 2 (edited, added, removed, moved passages) indexed from scratch."""
    root = tmp_path_factory.mktemp("versions")
    write_corpus(root / "v1", 600, 4, bad_every=100, duplicates=5)
    changes = write_next_version(root / "v1", root / "v2", edited=0.05, added=0.03, removed=0.02, moved=0.05)["changes"]
    assert min(changes.values()) > 5  # every kind of change is there
    index_here(_config(root / "v1", root / "run-v1"))
    index_here(_config(root / "v2", root / "run-v2"))
    return root


def _passages(run) -> dict[str, tuple[str, str]]:
    return {r["id"]: (r["title"], r["text"]) for r in pq.read_table(run / "passages").to_pylist()}


def _expected_counts(old: dict, new: dict) -> dict[str, int]:
    same = sum(1 for pid, content in new.items() if old.get(pid) == content)
    return {"reused": same, "changed": sum(1 for pid in new if pid in old) - same,
            "added": sum(1 for pid in new if pid not in old), "dropped": sum(1 for pid in old if pid not in new)}


def _assert_same_outputs(run, reference) -> None:
    for stage in ("passages", "queries", "embeddings"):
        assert pq.read_table(run / stage).equals(pq.read_table(reference / stage)), stage


@pytest.mark.parametrize("keys_per_partition", [1_000_000, 150])  # one match task; several
def test_a_new_version_with_reuse_equals_a_run_from_scratch_and_only_changes_reach_the_models(
        versions, tmp_path, monkeypatch, keys_per_partition):
    monkeypatch.setattr(reuse_module, "KEYS_PER_PARTITION", keys_per_partition)
    run = tmp_path / "reuse"
    summary, parts = index_here(_config(versions / "v2", run, reuse_from=[str(versions / "run-v1")]))
    _assert_same_outputs(run, versions / "run-v2")

    old, new = _passages(versions / "run-v1"), _passages(versions / "run-v2")
    expected = _expected_counts(old, new)
    assert summary.partitions == -(-(len(old) + len(new)) // keys_per_partition)
    assert (summary.reused_embeddings, summary.reused_queries, summary.changed, summary.added, summary.dropped) == (
        expected["reused"], expected["reused"], expected["changed"], expected["added"], expected["dropped"])
    models_saw = expected["changed"] + expected["added"]
    assert sum(p["queries_passages_generated"] for p in parts) == models_saw
    assert sum(p["embeddings_passages_encoded"] for p in parts) == models_saw
    assert sum(p["embeddings_queries_encoded"] for p in parts) == models_saw * 2 * 2  # 2 languages x 2 queries


def test_other_encoder_settings_reuse_the_queries_and_encode_every_passage(versions, tmp_path):
    v1_other = tmp_path / "run-v1-alpha"
    index_here(_config(versions / "v1", v1_other, fusion={"alpha": 0.5}))
    summary, parts = index_here(_config(versions / "v2", tmp_path / "reuse", reuse_from=[str(v1_other)]))
    assert summary.sources[0].differs == ["fusion"] and summary.reused_embeddings == 0
    assert summary.reused_queries == _expected_counts(_passages(versions / "run-v1"),
                                                      _passages(versions / "run-v2"))["reused"]
    assert sum(p["embeddings_passages_encoded"] for p in parts) == sum(p["embeddings_rows"] for p in parts)
    assert sum(p["queries_passages_generated"] for p in parts) < sum(p["embeddings_rows"] for p in parts) / 5
    _assert_same_outputs(tmp_path / "reuse", versions / "run-v2")


def test_other_generator_settings_reuse_nothing(versions, tmp_path):
    summary, parts = index_here(_config(versions / "v2", tmp_path / "reuse", reuse_from=[str(versions / "run-v1")],
                                        generator={"model": "stand-in:lead-words", "languages": ["ar", "fi"],
                                                   "queries_per_language": 2, "seed": 7}))
    assert summary.sources[0].differs == ["generator"] and summary.reused_queries == 0
    assert summary.added == summary.passages  # no source matched
    assert sum(p["queries_passages_generated"] for p in parts) == summary.passages


def test_the_first_listed_source_wins_and_a_second_fills_in(versions, tmp_path):
    """Version 2 as the first source gives every passage; version 1 listed first gives the unchanged ones
    and version 2 the rest, so nothing reaches the models."""
    summary, parts = index_here(_config(versions / "v2", tmp_path / "reuse",
                                        reuse_from=[str(versions / "run-v1"), str(versions / "run-v2")]))
    expected = _expected_counts(_passages(versions / "run-v1"), _passages(versions / "run-v2"))
    assert summary.reused_embeddings == summary.passages and summary.changed == summary.added == 0
    plans = pq.read_table(tmp_path / "reuse" / "reuse").to_pylist()
    assert sum(1 for p in plans if p["source"] == 0) == expected["reused"]
    assert sum(p["queries_passages_generated"] + p["embeddings_passages_encoded"] for p in parts) == 0
    _assert_same_outputs(tmp_path / "reuse", versions / "run-v2")


def test_a_source_that_is_no_finished_run_is_refused(versions, tmp_path):
    import json

    with pytest.raises(ValueError, match="has no manifest.json"):
        index_here(_config(versions / "v2", tmp_path / "a", reuse_from=[str(tmp_path / "nothing")]))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "manifest.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(ValueError, match="is not a finished run"):
        index_here(_config(versions / "v2", tmp_path / "b", reuse_from=[str(unfinished)]))


def test_reuse_from_cannot_name_the_output_or_come_with_queries_from(tmp_path):
    with pytest.raises(ValueError, match="cannot be combined"):
        _config(tmp_path, tmp_path / "out", reuse_from=[str(tmp_path / "a")], queries_from=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="the run's own output folder"):
        _config(tmp_path, tmp_path / "out", reuse_from=[str(tmp_path / "out")])
