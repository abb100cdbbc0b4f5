import pytest

from ray_jobs.cli import config_reference
from ray_jobs.common import parse_job_args
from xdr.config import IndexingJobConfig, load_job_config


def test_defaults_are_the_papers_settings():
    cfg = IndexingJobConfig(output="o", corpus={"path": "c"})
    assert cfg.generator.languages == ["ar", "bn", "fi", "ja", "ko", "ru", "te"]
    assert (cfg.generator.queries_per_language, cfg.generator.top_k) == (5, 10)
    assert (cfg.generator.max_input_tokens, cfg.generator.max_new_tokens) == (128, 32)
    assert (cfg.encoder.pooling, cfg.encoder.passage_max_tokens, cfg.encoder.query_max_tokens) == ("cls", 128, 32)
    assert (cfg.fusion.alpha, cfg.fusion.mode) == (0.01, "sum")


def test_yaml_and_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output: out\ncorpus: {path: c.jsonl}\ngenerator: {queries_per_language: 3}\n")
    _, cfg = parse_job_args("t", ["--config", str(path), "--generator.languages=[fi, te]", "--fusion.alpha", "0.2",
                                  "--set", "embedding_dtype=float16"], IndexingJobConfig)
    assert cfg.generator.queries_per_language == 3
    assert cfg.generator.languages == ["fi", "te"] and cfg.fusion.alpha == 0.2
    assert cfg.embedding_dtype == "float16"


def test_bad_values_are_reported_with_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output: out\ncorpus: {path: c}\nfusion: {mode: max}\n")
    with pytest.raises(ValueError, match=r"(?s)in .*c.yaml.*fusion.mode"):
        load_job_config(IndexingJobConfig, path)
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        load_job_config(IndexingJobConfig, None, ["output=o", "corpus.path=c", "generator.languages=[xx]"])
    with pytest.raises(ValueError, match="not of the form"):
        load_job_config(IndexingJobConfig, None, ["output"])
    with pytest.raises(ValueError, match="Extra inputs"):
        load_job_config(IndexingJobConfig, None, ["output=o", "corpus.path=c", "encoder.poolin=cls"])


def test_config_reference_lists_every_field():
    table = config_reference(IndexingJobConfig)
    for field in ("`output`", "`corpus.path`", "`generator.top_k`", "`fusion.alpha`", "`resources.encoder_actors`"):
        assert field in table
