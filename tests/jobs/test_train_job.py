"""The training job on a real local Ray (Ray Train, 2 gloo workers), checkpoints on a real S3 server, a
worker killed mid-run, the driver killed and rerun, and the trained model in the indexing job's encoder."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from tests.support.jobs import run_and_sigkill_when
from tests.support.paths import REPO
from xdr.config import EncoderConfig, TrainEncoderConfig
from xdr.io.storage import Storage
from xdr.models.encoder import make_encoder

TOPICS = ["river water flows", "mountain snow peak", "city street houses", "music song singer", "bread oven baker",
          "ship sea sailor", "star sky night", "forest tree leaves", "school teacher pupil", "train rail station",
          "horse rider field", "king crown castle", "coffee cup morning", "rain cloud storm", "book page reader",
          "fish lake hook"]


def _parallel_rows(n_items: int = 64) -> list[dict]:
    """Questions share their paragraph's topic words, so a model can learn to match them; 'xx' mirrors the
    words (a second 'language' for cross-lingual batches)."""
    rows = []
    for i in range(n_items):
        words = TOPICS[i % len(TOPICS)].split()
        for lang, w in (("en", words), ("xx", [x[::-1] for x in words])):
            rows.append({"id": f"q{i}", "lang": lang, "group": f"g{i % 8}", "question": f"{w[i % 3]} {w[(i + 1) % 3]}?",
                         "passage": f"{' '.join(w)} number {i % len(TOPICS)}", "title": ""})
    return rows


def _registered_checkpoints(output: str) -> int:
    """Checkpoints Ray Train has registered (its controller polls reports every 2 s, so a checkpoint folder
    on disk may not be registered yet; a restart resumes only from a registered one)."""
    storage = Storage()
    snapshots = storage.list_files(f"{output}/checkpoints", "checkpoint_manager_snapshot.json")
    if not snapshots:
        return 0
    try:
        return len(json.loads(storage.read_bytes(snapshots[0]))["checkpoint_results"])
    except (OSError, ValueError, KeyError):  # being rewritten
        return 0


def _descends_from_this_process(process) -> bool:
    """The local Ray that ray.init starts runs under the test process (raylet -> workers)."""
    try:
        return any(parent.pid == os.getpid() for parent in process.parents())
    except Exception:  # noqa: BLE001 - the process ended meanwhile
        return False


def _config(tiny_models, tmp_path, output, **overrides) -> TrainEncoderConfig:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _parallel_rows()), encoding="utf-8")
    values = {"output": output, "model": str(tiny_models["encoder"]), "pooling": "mean", "normalize": True,
              "train": [{"kind": "parallel_jsonl", "path": str(data)}],
              "validation": [{"kind": "parallel_jsonl", "path": str(data)}],
              "batch_size": 16, "lr": 2e-3, "steps": 30, "validate_every": 10, "checkpoint_every": 10,
              "validation_batches": 2, "patience": 5, "temperature": 0.1, "num_workers": 2, "cpus_per_worker": 0.5,
              "query_max_tokens": 16, "passage_max_tokens": 32, "max_failures": 2, **overrides}
    return TrainEncoderConfig.model_validate(values)


def _kill_a_train_worker_after_the_first_checkpoint(output: str):
    """Starts a thread that SIGKILLs one Ray Train worker of this test's Ray once a checkpoint is registered;
    returns the thread and the list the killed pid lands in."""
    import threading

    import psutil

    killed = []

    def kill():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if _registered_checkpoints(output) >= 1:
                workers = [p for p in psutil.process_iter(["cmdline"])  # this test's Ray only: another Ray
                           if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])  # on the machine is not ours
                           and _descends_from_this_process(p)]
                if workers:
                    workers[0].send_signal(signal.SIGKILL)
                    killed.append(workers[0].pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    return killer, killed


@pytest.mark.slow
def test_two_workers_checkpoint_to_s3_resume_after_a_killed_worker_and_the_model_indexes(ray_local, s3_server,
                                                                                         tiny_models, tmp_path):
    """One run for both: a worker SIGKILLed after the first checkpoint is replaced, and training resumes from
    the checkpoint on S3, not from step 0."""
    from ray_jobs.train_encoder import run_training

    output = f"s3://{s3_server.bucket}/train/run1"
    killer, killed = _kill_a_train_worker_after_the_first_checkpoint(output)
    manifest = run_training(_config(tiny_models, tmp_path, output, steps=60))
    killer.join(timeout=1)
    assert killed, "no Ray Train worker was found to kill"
    assert manifest["steps"] == 60 and len(manifest["resumed_at"]) >= 1
    assert all(step % 10 == 0 and step > 0 for step in manifest["resumed_at"])  # from a checkpoint, not step 0
    steps, losses = zip(*manifest["val_losses"])
    # each validation once, in order: the restart resumed the curve from the checkpoint, not appended to it
    assert list(steps) == list(range(10, 61, 10)) and min(losses) < 0.8 * losses[0], manifest["val_losses"]
    assert losses[list(steps).index(manifest["best_step"])] == min(losses) and manifest["examples_per_s"] > 0
    assert 0.9 * manifest["parameters"] < manifest["trainable_parameters"] < manifest["parameters"]  # all but pooler
    assert len(manifest["data_files"]) == 2 and all(len(f["sha256"]) == 64 for f in manifest["data_files"])
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(
        Bucket=s3_server.bucket, Prefix="train/run1/").get("Contents", [])]
    assert any("/checkpoints/" in k and k.endswith("state.pt") for k in keys), keys
    assert {"train/run1/model/model.safetensors", "train/run1/manifest.json"} <= set(keys)

    # encoder.model takes the S3 folder as it is (copied once to the model cache)
    trained_config = EncoderConfig(model=f"{output}/model", pooling="mean", normalize=True)
    texts = ["river water", "king crown castle number 11"]
    trained = make_encoder(trained_config).encode_queries(texts)
    before = make_encoder(EncoderConfig(model=str(tiny_models["encoder"]), pooling="mean",
                                        normalize=True)).encode_queries(texts)
    assert trained.shape == before.shape and np.abs(trained - before).max() > 1e-2
    _index_and_search_over_the_endpoint(s3_server, tiny_models, trained_config, base=before, texts=texts)


def _index_and_search_over_the_endpoint(s3_server, tiny_models, trained_config, base, texts):
    """The indexing job embeds with the trained model from S3, and the endpoint encodes questions with it."""
    from ray import serve

    from ray_jobs import serve_app
    from ray_jobs.build_index import build_index
    from ray_jobs.common import free_port
    from ray_jobs.index_corpus import run_indexing
    from tests.support.jobs import make_config
    from xdr.config import IndexBuildConfig, ServeConfig
    from xdr.index.search import ShardedSearcher

    bucket = s3_server.bucket
    passages = sorted({(r["lang"], r["passage"]) for r in _parallel_rows()})
    s3_server.client().put_object(Bucket=bucket, Key="train/corpus.jsonl", Body="".join(
        json.dumps({"id": f"p{i}", "text": text, "lang": lang}) + "\n" for i, (lang, text) in enumerate(passages)
    ).encode())
    run = f"s3://{bucket}/train/index-run"
    job = make_config(tiny_models, f"s3://{bucket}/train/corpus.jsonl", run, encoder=trained_config.model_dump(),
                      fusion={"alpha": 0.0})  # passage vectors = E(passage), checkable below
    run_indexing(job)
    build_index(IndexBuildConfig(run=run, shards=2))  # 32 vectors: IVF1,Flat, exact
    indexed = ShardedSearcher(f"{run}/index")
    encoder = make_encoder(trained_config)
    passage_vectors = encoder.encode_passages([""] * len(passages), [text for _, text in passages])
    questions = encoder.encode_queries(texts)
    expected = indexed.search(questions, k=5)
    np.testing.assert_allclose(expected.scores, np.sort(questions @ passage_vectors.T, axis=1)[:, ::-1][:, :5],
                               rtol=1e-4)

    url = serve_app.start(ServeConfig(index=f"{run}/index", port=free_port(), encoder_replicas=(1, 1),
                                      shard_replicas=(1, 1), replica_cpus=0.1), name="xdr-trained")
    try:
        response = requests.post(f"{url}/search", json={"queries": texts, "k": 5}, timeout=60)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert requests.get(f"{url}/info", timeout=10).json()["encoder"] == trained_config.model
    finally:
        serve.shutdown()
    assert [[h["id"] for h in row] for row in results] == expected.ids
    np.testing.assert_allclose([[h["score"] for h in row] for row in results], expected.scores, rtol=1e-4)
    with_base_questions = indexed.search(base, k=5)  # what an endpoint encoding with the base model returns
    assert not np.allclose(with_base_questions.scores, expected.scores, rtol=1e-3)


@pytest.mark.slow
def test_lora_and_code_switching_on_two_workers_write_a_merged_model(ray_local, tiny_models, tmp_path):
    from ray_jobs.train_encoder import run_training

    dictionary = tmp_path / "en-xx.txt"  # 'xx' mirrors the words: a real dictionary for this toy language
    dictionary.write_text("".join(f"{w} {w[::-1]}\n" for topic in TOPICS for w in topic.split()))
    config = _config(tiny_models, tmp_path, str(tmp_path / "lora"), steps=10, validate_every=5, checkpoint_every=5,
                     lora={"rank": 4, "alpha": 8, "dropout": 0.0},
                     code_switch={"dictionaries": [str(dictionary)], "ratio": 0.5})
    manifest = run_training(config)
    assert manifest["steps"] == 10 and 0 < manifest["trainable_parameters"] < 0.05 * manifest["parameters"]
    assert str(dictionary) in {f["uri"] for f in manifest["data_files"]}
    texts = ["river water", "king crown castle number 11"]
    trained = make_encoder(EncoderConfig(model=manifest["model_folder"], pooling="mean", normalize=True))
    base = make_encoder(EncoderConfig(model=str(tiny_models["encoder"]), pooling="mean", normalize=True))
    assert np.abs(trained.encode_queries(texts) - base.encode_queries(texts)).max() > 1e-3


@pytest.mark.slow
def test_the_driver_killed_and_rerun_resumes_to_the_uninterrupted_runs_curve_and_model(ray_local, tiny_models,
                                                                                       tmp_path):
    """The driver runs on the shared cluster, as `ray job submit` runs it: killed, Ray ends its job's workers.
    The rerun resumes from the checkpoint (model, optimizer, schedule, batches, dropout seeds), so its
    validation curve and written model are those of the same run left alone."""
    from ray_jobs.train_encoder import run_training

    config = _config(tiny_models, tmp_path, str(tmp_path / "run"), steps=60, num_workers=1, cpus_per_worker=1)
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDR_LOG_DIR": str(tmp_path / "logs")}
    argv = [sys.executable, "-m", "ray_jobs.train_encoder", "--config", str(config_file),
            "--address", ray_local.get_runtime_context().gcs_address]
    run_and_sigkill_when(argv, env, lambda: _registered_checkpoints(tmp_path / "run") >= 1, 300, "checkpoint")
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "use it: --encoder.model=" in done.stdout
    resumed = json.loads((tmp_path / "run" / "manifest.json").read_text())
    alone = run_training(config.model_copy(update={"output": str(tmp_path / "alone")}))

    assert alone["resumed_at"] == [] and len(resumed["resumed_at"]) == 1
    assert resumed["resumed_at"][0] in (10, 20, 30, 40, 50)  # from a checkpoint: no step beyond it is done twice
    assert resumed["steps"] == alone["steps"] == 60
    steps, losses = zip(*resumed["val_losses"])
    alone_steps, alone_losses = zip(*alone["val_losses"])
    assert list(steps) == list(alone_steps) == [10, 20, 30, 40, 50, 60]  # each validation once, in order
    np.testing.assert_allclose(losses, alone_losses, rtol=1e-4)
    assert resumed["best_step"] == alone["best_step"] and min(alone_losses) < 0.8 * alone_losses[0]
    _assert_same_weights(Path(resumed["model_folder"]), Path(alone["model_folder"]))


def _assert_same_weights(folder: Path, other: Path) -> None:
    from safetensors.numpy import load_file

    weights, others = load_file(folder / "model.safetensors"), load_file(other / "model.safetensors")
    assert weights.keys() == others.keys()
    for name, value in weights.items():
        np.testing.assert_allclose(value, others[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_generator_job_on_two_workers_learns_and_writes_a_model_the_indexing_generator_loads(ray_local, tiny_models,
                                                                                               tmp_path):
    """xQG training on Ray Train: the question is the passage's first two words (a pattern a tiny model can
    learn in a few steps); bad rows are rejected and counted; the written folder is a `generator.model`."""
    from ray_jobs.train_generator import run_training
    from xdr.config import GeneratorConfig, TrainGeneratorConfig
    from xdr.models.generator import QueryGenerator
    from xdr.train.qg import TrainableGenerator, load_qg_jsonl, qg_validation_loss

    words = [w for topic in TOPICS for w in topic.split()]
    rows = [{"text": f"{a} {b} and more", "question": f"{a} {b}?", "lang": lang}
            for i, (a, b) in enumerate(zip(words, words[1:] + words[:1])) for lang in ("de", "ru")]
    data, val = tmp_path / "qg.jsonl", tmp_path / "qg-val.jsonl"
    bad = ['{"text": "x", "question": "y", "lang": "zz"}', "{broken"]
    data.write_text("\n".join([json.dumps(r) for r in rows[:-16]] + bad) + "\n")
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[-16:]))
    config = TrainGeneratorConfig.model_validate({
        "output": str(tmp_path / "gen"), "model": str(tiny_models["generator"]),
        "train": [{"kind": "qg_jsonl", "path": str(data)}], "validation": [{"kind": "qg_jsonl", "path": str(val)}],
        "batch_size": 16, "micro_batch_size": 4, "lr": 3e-3, "steps": 20, "validate_every": 10,
        "checkpoint_every": 10, "num_workers": 2, "cpus_per_worker": 0.5, "max_input_tokens": 32,
        "max_target_tokens": 8})
    manifest = run_training(config)
    assert manifest["steps"] == 20 and manifest["rejects"] == 2 and len(manifest["val_losses"]) == 2
    assert manifest["trainable_parameters"] == manifest["parameters"] and manifest["run_name"].startswith(
        "train-generator-")
    examples, _ = load_qg_jsonl(Storage(), [str(val)])
    kw = {"micro_batch_size": 16, "autocast_dtype": None, "template": config.prompt_template, "max_input_tokens": 32,
          "max_target_tokens": 8}
    base = qg_validation_loss(TrainableGenerator(str(tiny_models["generator"])), [examples], **kw)
    trained = qg_validation_loss(TrainableGenerator(manifest["model_folder"]), [examples], **kw)
    assert math.isclose(trained, manifest["best_val_loss"], rel_tol=1e-4) and trained < 0.9 * base, (trained, base)

    generator = QueryGenerator(GeneratorConfig(model=manifest["model_folder"], languages=["de", "ru"],
                                               queries_per_language=2, max_new_tokens=6))
    queries = generator.generate([{"id": "p1", "title": "", "text": "river water and more"}])
    assert [(q["lang"], q["qidx"]) for q in queries] == [("de", 0), ("de", 1), ("ru", 0), ("ru", 1)]
