"""cluster/ files validate against Ray's own schemas; KubeRay manifests carry the fields KubeRay requires."""

import copy

import pytest
import yaml

from tests.support.paths import REPO
from xdr.config import IndexBuildConfig, IndexingJobConfig, ServeConfig

CLUSTER = REPO / "cluster"


def _load(name):
    return yaml.safe_load((CLUSTER / name).read_text(encoding="utf-8"))


def test_launcher_config_validates_against_rays_cluster_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load("aws.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))  # defaults filled in as `ray up` does
    gpu_groups = [n for n, t in config["available_node_types"].items() if n.startswith("gpu")]
    assert gpu_groups and all(config["available_node_types"][n]["min_workers"] == 0 for n in gpu_groups)
    broken = copy.deepcopy(config)
    broken["available_node_types"]["head"]["max_workerz"] = 1
    with pytest.raises(Exception, match="max_workerz"):
        validate_config(prepare_config(broken))


def _check_serve_config(serve_config):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(serve_config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(serve_config)
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        assert (module, attr) == ("ray_jobs.serve_app", "app_builder")
        ServeConfig.model_validate(app.args)  # the args are what app_builder accepts


def test_serve_config_validates_against_serve_schema_and_our_config():
    _check_serve_config(_load("serve_config.yaml"))


def test_kuberay_manifests_carry_required_fields():
    cluster = _load("kuberay/raycluster.yaml")
    job = _load("kuberay/rayjob.yaml")
    service = _load("kuberay/rayservice.yaml")
    for doc, kind in ((cluster, "RayCluster"), (job, "RayJob"), (service, "RayService")):
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind and doc["metadata"]["name"]
    specs = [cluster["spec"], job["spec"]["rayClusterSpec"], service["spec"]["rayClusterConfig"]]
    for spec in specs:
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        assert "rayStartParams" in spec["headGroupSpec"]
        for group in spec["workerGroupSpecs"]:
            assert group["groupName"] and "rayStartParams" in group and group["template"]["spec"]["containers"]
            assert 0 <= group["minReplicas"] <= group["maxReplicas"]
    assert "ray_jobs.index_corpus" in job["spec"]["entrypoint"] and "ray_jobs.build_index" in job["spec"]["entrypoint"]
    _check_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]))


def test_job_configs_parse():
    from xdr.config import TrainEncoderConfig, TrainGeneratorConfig

    IndexingJobConfig.model_validate(yaml.safe_load((REPO / "configs" / "xor_tydi.yaml").read_text()))
    IndexBuildConfig.model_validate(_load("build_index.yaml"))
    for name in ("train_hybrid_xquad.yaml", "train_xdr_xor_tydi.yaml"):
        TrainEncoderConfig.model_validate(yaml.safe_load((REPO / "configs" / name).read_text()))
    xqg = yaml.safe_load((REPO / "configs" / "train_xqg_xor_tydi.yaml").read_text())
    xqg = TrainGeneratorConfig.model_validate(xqg)
    assert (xqg.lr, xqg.batch_size, xqg.steps, xqg.warmup_steps) == (1e-4, 128, 2000, 0)  # docs/METHOD.md section 1


def test_sweep_configs_parse_and_every_trial_is_a_valid_training_config(monkeypatch):
    from xdr.config import SweepConfig
    from xdr.experiments import sweep

    monkeypatch.chdir(REPO)  # the configs name their base and data relative to the repository root
    found = sorted((REPO / "configs").glob("sweep_*.yaml"))
    assert len(found) >= 4
    for path in found:
        config = SweepConfig.model_validate(yaml.safe_load(path.read_text()))
        trials = sweep.trials(config)
        assert len({t.name for t in trials}) == len(trials)
        for trial in trials:
            sweep.trial_config(config, trial)  # raises on a field the train-encoder job does not have
    alpha, kinds = (SweepConfig.model_validate(yaml.safe_load((REPO / "configs" / f"sweep_{n}_xquad.yaml").read_text()))
                    for n in ("alpha", "batch_kinds"))
    assert {t.name for t in sweep.trials(kinds)} <= {t.name for t in sweep.trials(alpha)}  # trained once for both
    assert alpha.output == kinds.output


def test_cluster_image_is_in_step_with_pyproject_and_setup():
    """The Dockerfile's Ray is the Ray pyproject pins (a client must match the cluster exactly), its Python
    is one pyproject allows and the CI machine runs, and its torch is the one scripts/setup.sh installs."""
    import re
    import sys

    import tomllib
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.M))
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{CUDA_TAG\}$", dockerfile, re.M)
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = {Requirement(r).name: Requirement(r).specifier for r in project["dependencies"]}
    assert str(pins["ray"]) == f"=={args['RAY_VERSION']}"
    python = f"{args['PYTHON_TAG'][2]}.{args['PYTHON_TAG'][3:]}"
    assert python in SpecifierSet(project["requires-python"])
    assert python == f"{sys.version_info[0]}.{sys.version_info[1]}", "CI tests another Python than the image runs"
    assert args["TORCH_VERSION"] in pins["torch"]
    assert f'"torch=={args["TORCH_VERSION"]}"' in (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert re.fullmatch(r"cu\d{3}", args["CUDA_TAG"])
    (faiss_gpu,) = project["optional-dependencies"]["gpu"]  # the image installs the extra's faiss-gpu
    assert f'--force-reinstall --no-deps "{faiss_gpu}"' in dockerfile and "pip uninstall -y faiss-cpu" in dockerfile
    for manifest in ("raycluster.yaml", "rayjob.yaml", "rayservice.yaml"):
        images = set(re.findall(r"image: (\S+)", (CLUSTER / "kuberay" / manifest).read_text(encoding="utf-8")))
        assert images == {f"ghcr.io/example/xdr:{project['version']}"}, (manifest, images)


def test_cluster_image_sets_the_serve_settings_xdr_serve_sets_for_its_ingress():
    """The image's ENV is what `xdr serve` sets locally for the haproxy ingress, less the 1 s drain (a
    cluster's load balancer needs Serve's own 30 s), plus the proxy middleware; and the callback imports."""
    import re
    import shlex

    from ray_jobs import serve_proxy

    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    env_lines = re.findall(r"^ENV ((?:.*\\\n)*.*)$", dockerfile, re.M)
    image_env = dict(item.split("=", 1) for line in env_lines for item in shlex.split(line.replace("\\\n", " ")))
    wanted = serve_proxy.ingress_env("haproxy")
    del wanted["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]
    assert {k: image_env.get(k) for k in wanted} == wanted
    module, _, name = image_env[serve_proxy.CALLBACK_ENV].partition(":")
    middlewares = getattr(__import__(module, fromlist=[name]), name)()
    assert [m.cls for m in middlewares] == [serve_proxy.LostReplicaAs503]


def test_the_local_autoscaling_cluster_has_the_launcher_configs_node_types_shrunk():
    """ray_jobs.local_cluster builds its config from aws.yaml: the same worker types and minimums, each node
    1 CPU and 1 GPU label where the real one has GPUs, and it validates against Ray's schema."""
    from ray.autoscaler._private.util import validate_config

    from ray_jobs.local_cluster import FAKE_HEAD_TYPE, NODE_TYPE_LABEL, rehearsal_config

    launcher = _load("aws.yaml")
    rig = rehearsal_config(launcher, "10.0.0.1:6379", max_workers_per_type=3, idle_timeout_s=12)
    validate_config(copy.deepcopy(rig))  # complete as written: the wheel lacks the provider's defaults file
    types = rig["available_node_types"]
    workers = {n: t for n, t in launcher["available_node_types"].items() if n != launcher["head_node_type"]}
    assert set(types) == set(workers) | {FAKE_HEAD_TYPE}
    assert types[FAKE_HEAD_TYPE]["resources"]["CPU"] == launcher["available_node_types"]["head"]["resources"]["CPU"]
    for name, spec in workers.items():
        has_gpu = spec["resources"].get("GPU", 0) > 0
        assert types[name]["resources"]["CPU"] == 1 and types[name]["resources"].get("GPU", 0) == int(has_gpu)
        assert types[name]["min_workers"] == spec["min_workers"]
        assert types[name]["max_workers"] == min(spec["max_workers"], 3)
        assert types[name]["labels"] == {NODE_TYPE_LABEL: name}
    assert {n for n, t in types.items() if t["resources"].get("GPU")} == {"gpu_worker_h100", "gpu_worker_a10g"}
    assert rig["idle_timeout_minutes"] == 0.2 and rig["max_workers"] == 9
    assert rig["provider"]["use_node_id_as_ip"] is True  # without it the autoscaler never finds a node idle

    del launcher["available_node_types"]["cpu_worker"]["resources"]["CPU"]
    with pytest.raises(ValueError, match="cpu_worker"):
        rehearsal_config(launcher, "10.0.0.1:6379")


def test_the_local_cluster_creates_rays_token_on_a_machine_without_one(tmp_path, monkeypatch):
    """`ray start` refuses to start a head without a token; a fresh machine (here: a fresh HOME) has none."""
    from ray_jobs.local_cluster import auth_token, ensure_auth_token

    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_token() is None
    ensure_auth_token()
    token = (tmp_path / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32 and auth_token() == token
    ensure_auth_token()  # one there: kept
    assert auth_token() == token
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-the-environment")
    assert auth_token() == "from-the-environment"
