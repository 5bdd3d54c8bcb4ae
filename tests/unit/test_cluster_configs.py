"""The cluster configs in cluster/: every launcher YAML passes Ray's schema and mlplatform's
rules, a broken copy is reported by name, and the KubeRay manifests agree with the launcher
YAMLs (images, Ray resources, MLP_* settings, pinned version) and embed a valid Serve config.

No Ray cluster: Ray's schema check and Serve's config models are plain Python."""

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlplatform.cli import app
from mlplatform.cluster.validate import validate_cluster_config

REPO = Path(__file__).resolve().parents[2]
LAUNCHER_YAMLS = sorted((REPO / "cluster").glob("*.yaml"))
CLOUD_YAMLS = [REPO / "cluster" / "aws-gpu.yaml", REPO / "cluster" / "gcp-gpu.yaml"]
KUBERAY = REPO / "cluster" / "kuberay"
#: The gpu_worker type's counts in both cloud YAMLs (unique there).
GPU_WORKER_COUNTS = "    min_workers: 0\n    max_workers: 4\n"
VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]

#: A minimal valid fake-provider cluster (the shape of cluster/local-fake.yaml).
FAKE = {
    "cluster_name": "t", "max_workers": 2, "idle_timeout_minutes": 0.25,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                 "disable_node_updaters": True, "disable_launch_config_check": True},
    "head_node_type": "ray.head.default",
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
        "cpu_worker": {"resources": {"CPU": 2, "serve_cpu": 2, "cpu_node": 1000},
                       "node_config": {}, "min_workers": 1, "max_workers": 1},
        "gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {},
                       "min_workers": 0, "max_workers": 1},
    },
    "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
    "head_start_ray_commands": [], "worker_start_ray_commands": [],
}


def variant(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    """A copy of ``source`` with ``old`` replaced (which must be there: no silent no-op)."""
    text = source.read_text()
    assert old in text, f"{old!r} not in {source.name}: update this test with the YAML"
    out = tmp_path / source.name
    out.write_text(text.replace(old, new))
    return out


def problems_of(tmp_path: Path, config: dict) -> list[str]:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return validate_cluster_config(path)


def joined(problems: list[str]) -> str:
    return "\n".join(problems)


# ------------------------------------------------------------------ the shipped YAMLs -------
def test_the_cloud_yamls_exist():
    assert set(CLOUD_YAMLS) <= set(LAUNCHER_YAMLS)


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_every_cluster_yaml_passes_rays_schema_and_our_rules(path):
    assert validate_cluster_config(path) == []


def test_a_minimal_fake_provider_cluster_passes(tmp_path):
    assert problems_of(tmp_path, FAKE) == []


# --------------------------------------------------------------------- Ray's schema ----------
@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda p: p.name)
def test_typod_key_in_a_node_type_is_named_with_the_fix(tmp_path, path):
    bad = variant(tmp_path, path, GPU_WORKER_COUNTS, GPU_WORKER_COUNTS.replace("min_workers",
                                                                             "min_worker"))
    problems = validate_cluster_config(bad)
    assert ("unknown key 'min_worker' in available_node_types.gpu_worker "
            "(did you mean 'min_workers'?)") in problems


def test_typod_top_level_key_is_named(tmp_path):
    bad = variant(tmp_path, CLOUD_YAMLS[0], "idle_timeout_minutes: 10", "idle_timeout_minute: 10")
    text = joined(validate_cluster_config(bad))
    assert "unknown key 'idle_timeout_minute' at the top level" in text
    assert "did you mean 'idle_timeout_minutes'?" in text
    assert "'idle_timeout_minutes' is not set" in text


def test_wrong_type_and_unknown_provider_are_reported(tmp_path):
    bad = variant(tmp_path, CLOUD_YAMLS[0], "max_workers: 8", "max_workers: many")
    assert "max_workers: 'many' is not of type 'integer'" in joined(validate_cluster_config(bad))
    bad = variant(tmp_path, CLOUD_YAMLS[0], "type: aws", "type: awss")
    assert "provider.type 'awss' is not a Ray node provider (did you mean 'aws'?)" in joined(
        validate_cluster_config(bad))


# ---------------------------------------------------------------------- our rules -----------
@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda p: p.name)
def test_gpu_type_with_min_workers_above_zero_is_reported(tmp_path, path):
    bad = variant(tmp_path, path, GPU_WORKER_COUNTS, GPU_WORKER_COUNTS.replace("0", "1"))
    text = joined(validate_cluster_config(bad))
    assert "GPU node type 'gpu_worker' has min_workers: 1" in text
    assert "min_workers: 0" in text


def test_rules_hold_on_the_fake_provider_too(tmp_path):
    config = json.loads(json.dumps(FAKE))
    config["available_node_types"]["gpu_worker"]["min_workers"] = 1
    config["available_node_types"]["ray.head.default"]["resources"] = {"CPU": 4}
    del config["available_node_types"]["cpu_worker"]["resources"]["serve_cpu"]
    text = joined(problems_of(tmp_path, config))
    assert "GPU node type 'gpu_worker' has min_workers: 1" in text
    assert "head node type 'ray.head.default' must advertise resources: {CPU: 0}" in text
    assert "no CPU worker type advertises 'serve_cpu'" in text
    config = json.loads(json.dumps(FAKE))
    config["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 2}
    assert "no worker node type has a GPU" in joined(problems_of(tmp_path, config))


def test_auth_off_is_reported(tmp_path):
    bad = variant(tmp_path, CLOUD_YAMLS[0], "export RAY_AUTH_MODE=token",
                  "export RAY_AUTH_MODE=disabled")
    assert ("every node type: Ray starts with RAY_AUTH_MODE=disabled"
            in joined(validate_cluster_config(bad)))


def test_token_not_shipped_to_the_nodes_is_reported(tmp_path):
    bad = variant(tmp_path, CLOUD_YAMLS[0],
                  '"~/.mlplatform/cluster-secrets": "~/.mlplatform/cluster-secrets"', "")
    text = joined(validate_cluster_config(bad))
    assert "token auth is on but nothing puts the token at ~/.mlplatform/cluster-secrets" in text


@pytest.mark.parametrize("yaml_path, uri, expected", [
    (CLOUD_YAMLS[0], "sqlite:////mnt/mlp/mlflow.db",
     "MLP_MLFLOW_TRACKING_URI=sqlite:////mnt/mlp/mlflow.db is a SQLite database"),
    (CLOUD_YAMLS[1], "http://127.0.0.1:5000", "points at the node itself"),
])
def test_mlflow_uri_workers_cannot_reach_is_reported(tmp_path, yaml_path, uri, expected):
    bad = variant(tmp_path, yaml_path,
                  'export MLP_MLFLOW_TRACKING_URI="http://${RAY_HEAD_IP}:5000"',
                  f"export MLP_MLFLOW_TRACKING_URI={uri}")
    assert expected in joined(validate_cluster_config(bad))


def test_missing_storage_is_reported(tmp_path):
    bad = variant(tmp_path, CLOUD_YAMLS[0], "export MLP_STORAGE_ROOT=/mnt/mlp\n", "")
    assert "MLP_STORAGE_ROOT is not set" in joined(validate_cluster_config(bad))


@pytest.mark.parametrize("root, expected", [
    ("/data/mlp", "is not on anything the YAML mounts"),
    ("s3://bucket/mlp", "storage_root is a file system path"),
    ("mlp", "is relative"),
])
def test_unshared_storage_is_reported(tmp_path, root, expected):
    bad = variant(tmp_path, CLOUD_YAMLS[0], "export MLP_STORAGE_ROOT=/mnt/mlp\n",
                  f"export MLP_STORAGE_ROOT={root}\n")
    assert expected in joined(validate_cluster_config(bad))


@pytest.mark.parametrize("where, expected", [
    ("/data/ckpt", "is not on anything the YAML mounts"),
    ("ftp://host/ckpt", "Ray Train cannot write to 'ftp://'"),
    ("ckpt", "is relative"),
    ("/mnt/mlp/ray_results", None),               # on the shared mount, on purpose
    ("gs://bucket/ray_results", None),
    # unset (<MLP_STORAGE_ROOT>/ray_results) while GPU workers run on spot: refused
    (None, "MLP_CHECKPOINT_STORAGE is not set, but GPU node type(s) ['gpu_worker'] run on "
           "spot/preemptible capacity"),
])
def test_checkpoint_storage_must_survive_a_node(tmp_path, where, expected):
    line = "export MLP_CHECKPOINT_STORAGE=s3://CHANGE-ME-mlplatform-bucket/ray_results\n"
    path = variant(tmp_path, CLOUD_YAMLS[0], line,
                   f"export MLP_CHECKPOINT_STORAGE={where}\n" if where else "")
    problems = [p for p in validate_cluster_config(path) if "CHECKPOINT" in p]
    if expected is None:
        assert problems == []
    else:
        assert expected in joined(problems)


AWS_SPOT = "      InstanceMarketOptions:\n        MarketType: spot\n"
GCP_SPOT = "        provisioningModel: SPOT\n        instanceTerminationAction: DELETE\n"


@pytest.mark.parametrize("path, spot_lines", [(CLOUD_YAMLS[0], AWS_SPOT),
                                              (CLOUD_YAMLS[1], GCP_SPOT)], ids=["aws", "gcp"])
def test_unset_checkpoint_storage_is_refused_only_with_spot_gpu_workers(tmp_path, path,
                                                                        spot_lines):
    from mlplatform.cluster.validate_env import spot_gpu_types

    assert spot_gpu_types(yaml.safe_load(path.read_text())) == ["gpu_worker"]
    line = re.search(r"    export MLP_CHECKPOINT_STORAGE=.*\n", path.read_text())[0]
    unset = variant(tmp_path, path, line, "")
    assert "run on spot/preemptible capacity" in joined(validate_cluster_config(unset))
    # the same YAML with on-demand GPU workers: the shared root is fine
    on_demand = variant(tmp_path, unset, spot_lines, "")
    assert spot_gpu_types(yaml.safe_load(on_demand.read_text())) == []
    assert [p for p in validate_cluster_config(on_demand) if "CHECKPOINT" in p] == []
    # GCP's older form, preemptible: true, counts as spot too
    preemptible = {"available_node_types": {"gpu": {
        "resources": {"GPU": 1}, "node_config": {"scheduling": [{"preemptible": True}]}}}}
    assert spot_gpu_types(preemptible) == []      # malformed (a list): no crash, no match
    preemptible["available_node_types"]["gpu"]["node_config"]["scheduling"] = {
        "preemptible": True}
    assert spot_gpu_types(preemptible) == ["gpu"]


# ------------------------------------------------------------ the MLflow server on the head ---
def _aws_start_commands_with(tmp_path, old: str, new: str) -> Path:
    return variant(tmp_path, CLOUD_YAMLS[0], old, new)


SERVER_LINE = 'MLFLOW_BACKEND_STORE_URI="$db_uri" nohup mlflow server'
SECRET_LINE = re.search(r"    db_uri=.*\n", CLOUD_YAMLS[0].read_text())[0]


@pytest.mark.parametrize("old, new", [
    # the env-var form the shipped YAMLs use, with a literal SQLite URI
    (SERVER_LINE, "MLFLOW_BACKEND_STORE_URI=sqlite:////home/ubuntu/mlflow.db nohup mlflow server"),
    # ... and through the shell variable it names
    (SECRET_LINE, "    db_uri=sqlite:////home/ubuntu/mlflow.db\n"),
    # exported on a line of its own
    (SERVER_LINE, "export MLFLOW_BACKEND_STORE_URI='sqlite:////home/ubuntu/mlflow.db'\n"
                  "    nohup mlflow server"),
    # the flag form
    (SERVER_LINE, "nohup mlflow server --backend-store-uri sqlite:////home/ubuntu/mlflow.db"),
], ids=["env-literal", "env-variable", "env-export", "flag"])
def test_sqlite_backend_of_the_head_mlflow_server_is_reported(tmp_path, old, new):
    bad = _aws_start_commands_with(tmp_path, old, new)
    assert ("the MLflow server on the head stores runs in sqlite:////home/ubuntu/mlflow.db"
            in joined(validate_cluster_config(bad)))


def test_head_mlflow_server_missing_or_without_a_database_is_reported(tmp_path):
    config = yaml.safe_load(CLOUD_YAMLS[1].read_text())
    config["head_start_ray_commands"] = [c for c in config["head_start_ray_commands"]
                                         if "mlflow server" not in c]
    text = joined(problems_of(tmp_path, config))
    assert ("MLP_MLFLOW_TRACKING_URI=http://${RAY_HEAD_IP}:5000 points at the head, but "
            "head_start_ray_commands start no `mlflow server`") in text
    no_backend = _aws_start_commands_with(tmp_path, SERVER_LINE, "nohup mlflow server")
    assert "the MLflow server on the head has no backend store" in joined(
        validate_cluster_config(no_backend))
    # a PostgreSQL URI, in either form, is what the rule wants
    for line in ("MLFLOW_BACKEND_STORE_URI=postgresql://u@db:5432/mlflow nohup mlflow server",
                 "nohup mlflow server --backend-store-uri postgresql://u@db:5432/mlflow"):
        good = _aws_start_commands_with(tmp_path, SERVER_LINE, line)
        assert [p for p in validate_cluster_config(good) if "MLflow" in p] == []


# -------------------------------------------------------------- the price table on the nodes ---
@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda p: p.name)
def test_every_node_gets_this_yaml_as_its_price_table(path):
    """file_mounts ships the YAML to every node and MLP_PRICE_TABLE names that copy, so a job
    there is priced with this file's metadata.prices (not the built-in prices)."""
    config = yaml.safe_load(path.read_text())
    (where,) = set(re.findall(r'export MLP_PRICE_TABLE="?([^"\s]+)', path.read_text()))
    node_path = where.replace("$HOME", "~")
    target, source = next((t, s) for t, s in config["file_mounts"].items()
                          if node_path.startswith(t.rstrip("/") + "/"))
    assert (REPO / source / node_path[len(target) + 1:]).resolve() == path.resolve()


@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda p: p.name)
def test_nodes_without_a_price_table_are_reported(tmp_path, path):
    line = re.search(r"    export MLP_PRICE_TABLE=.*\n", path.read_text())[0]
    unset = variant(tmp_path, path, line, "")
    assert ("every node type: MLP_PRICE_TABLE is not set: jobs there would be costed at "
            "mlplatform's built-in prices") in joined(validate_cluster_config(unset))
    unshipped = variant(tmp_path, path, '"~/mlp-cluster": "cluster"', "")
    assert "nothing puts a file there" in joined(validate_cluster_config(unshipped))


def test_a_shipped_price_table_must_be_this_yamls(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "aws-gpu.yaml").write_text("cpu_hour: 0.1\ngpu_hour: {L4: 0.805, A10G: 1.006}\n")
    elsewhere = variant(tmp_path, CLOUD_YAMLS[0], '"~/mlp-cluster": "cluster"',
                        f'"~/mlp-cluster": "{other}"')
    assert "whose prices differ from this YAML's metadata.prices" in joined(
        validate_cluster_config(elsewhere))
    (other / "aws-gpu.yaml").write_text("cpu_hours: 0.1\n")
    assert "is not a price table" in joined(validate_cluster_config(elsewhere))


@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda p: p.name)
def test_every_node_runs_serve_behind_haproxy_in_throughput_mode(path):
    """The recommended production setting (mlplatform.serving.haproxy), in the env file every
    node sources before `ray start`: the head (Serve controller, HAProxy) and the workers
    (replicas) alike."""
    from mlplatform.cluster._launcher_yaml import node_types
    from mlplatform.cluster.validate_env import SERVE_PREFIX, _env, _node_text
    from mlplatform.serving.haproxy import THROUGHPUT_ENV

    config = yaml.safe_load(path.read_text())
    head = config["head_node_type"]
    for name in node_types(config):
        serve = {k: v for k, v in _env(_node_text(config, name, name == head)).items()
                 if k.startswith(SERVE_PREFIX)}
        assert serve == {"RAY_SERVE_ENABLE_HA_PROXY": "1", **THROUGHPUT_ENV}, (path.name, name)


def test_nodes_that_disagree_on_serves_settings_are_reported(tmp_path):
    bad = variant(tmp_path, CLOUD_YAMLS[0], "worker_setup_commands: []",
                  "worker_setup_commands:\n"
                  "  - echo 'export RAY_SERVE_THROUGHPUT_OPTIMIZED=0' >> ~/mlp.env")
    text = joined(validate_cluster_config(bad))
    assert "the node types disagree on Ray Serve's settings" in text
    assert ("'cpu_worker': RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=0"
            in text)
    assert "'head': RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in text
    # Dropping them everywhere (back to Serve's default proxy) is a choice, not a problem.
    plain = variant(tmp_path, CLOUD_YAMLS[0], "export RAY_SERVE_ENABLE_HA_PROXY=1\n"
                    "    export RAY_SERVE_THROUGHPUT_OPTIMIZED=1\n", "")
    assert validate_cluster_config(plain) == []


def test_unknown_mlp_variable_and_unpinned_image_are_reported(tmp_path):
    bad = variant(tmp_path, CLOUD_YAMLS[0], "export MLP_CLUSTER_AUTOSCALES=1",
                  "export MLP_CLUSTER_AUTOSCALES=1\n    export MLP_STORAGE_ROOTS=/x")
    assert "sets MLP_STORAGE_ROOTS, which mlplatform does not know" in joined(
        validate_cluster_config(bad))
    bad = variant(tmp_path, CLOUD_YAMLS[0], "image: rayproject/ray:2.60.0-py311-gpu",
                  "image: rayproject/ray:latest-gpu")
    assert "docker.image is 'rayproject/ray:latest-gpu': pin a release tag" in joined(
        validate_cluster_config(bad))


def test_public_dashboard_and_missing_prices_are_reported(tmp_path):
    bad = variant(tmp_path, CLOUD_YAMLS[0], "--dashboard-host=127.0.0.1",
                  "--dashboard-host=0.0.0.0")
    assert "--dashboard-host=0.0.0.0" in joined(validate_cluster_config(bad))
    text = CLOUD_YAMLS[0].read_text().split("\nmetadata:")[0]
    (tmp_path / "noprice.yaml").write_text(text)
    assert "metadata.prices is missing" in joined(validate_cluster_config(tmp_path / "noprice.yaml"))


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("a: [b\n", "is not valid YAML (line 2, column 1)"),
    ("- a\n- b\n", "must be a mapping of cluster settings"),
])
def test_unreadable_files_are_one_clear_problem(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    problems = validate_cluster_config(path)
    assert len(problems) == 1 and expected in problems[0]


def test_cli_exits_0_on_a_good_file_and_1_naming_the_problem(tmp_path):
    runner = CliRunner()
    good = runner.invoke(app, ["cluster", "validate", str(CLOUD_YAMLS[0])])
    assert good.exit_code == 0, good.output
    assert "aws-gpu.yaml: ok" in good.output
    bad_file = variant(tmp_path, CLOUD_YAMLS[0], "idle_timeout_minutes: 10", "idle_timeout_minute: 10")
    bad = runner.invoke(app, ["cluster", "validate", str(CLOUD_YAMLS[1]), str(bad_file)])
    assert bad.exit_code == 1
    assert "gcp-gpu.yaml: ok" in bad.output
    assert "unknown key 'idle_timeout_minute'" in bad.output


# --------------------------------------------------------------- prices for mlp cost ---------
@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda p: p.name)
def test_price_table_is_what_mlp_cost_reads(path):
    from mlplatform.cluster.cost import PriceTable, load_price_table

    config = yaml.safe_load(path.read_text())
    prices = PriceTable.from_mapping(config["metadata"]["prices"], path.name)
    # The launcher YAML itself is a price table for `mlp cost` (MLP_PRICE_TABLE / price_table).
    whole = load_price_table(path)
    assert (whole.cpu_hour, whole.gpu_hour) == (prices.cpu_hour, prices.gpu_hour)
    for name, node_type in config["available_node_types"].items():
        for res in node_type["resources"]:
            if res.startswith("accelerator_type:"):
                kind = res.split(":", 1)[1]
                assert kind in prices.gpu_hour, (name, kind)
                assert prices.gpu_price(kind) == config["metadata"]["node_prices"][name][
                    "usd_per_hour"] / node_type["resources"]["GPU"]


# -------------------------------------------------------------------------- KubeRay ----------
def kuberay(name: str) -> list[dict]:
    return list(yaml.safe_load_all((KUBERAY / name).read_text()))


def ray_cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[doc["kind"]](doc["spec"])


def ray_docs() -> list[dict]:
    docs = [d for f in ("raycluster.yaml", "rayjob.yaml", "rayservice.yaml") for d in kuberay(f)]
    return [d for d in docs if d["apiVersion"] == "ray.io/v1"]


def groups(spec: dict) -> dict[str, dict]:
    out = {"head": spec["headGroupSpec"]}
    out.update({g["groupName"]: g for g in spec["workerGroupSpecs"]})
    return out


def test_kuberay_manifests_parse_with_the_right_kinds():
    assert [(d["apiVersion"], d["kind"]) for d in kuberay("raycluster.yaml")] == [
        ("v1", "ConfigMap"), ("v1", "ConfigMap"), ("v1", "PersistentVolumeClaim"),
        ("ray.io/v1", "RayCluster")]
    assert [(d["apiVersion"], d["kind"]) for d in kuberay("rayjob.yaml")] == [("ray.io/v1", "RayJob")]
    assert [(d["apiVersion"], d["kind"]) for d in kuberay("rayservice.yaml")] == [
        ("ray.io/v1", "RayService")]
    job = kuberay("rayjob.yaml")[0]["spec"]
    assert job["entrypoint"] == "python jobs/train.py --project examples/fraud --model xgboost"
    assert (REPO / "examples" / "fraud" / "mlplatform.yaml").is_file()
    assert "working_dir" in job["runtimeEnvYAML"]
    for doc in ray_docs():
        spec = ray_cluster_spec(doc)
        assert spec["authOptions"] == {"mode": "token"}, doc["kind"]
        assert spec["rayVersion"] == "2.60.0"


def test_rayservice_serve_config_passes_serves_schema_and_ours():
    from ray.serve.schema import ServeDeploySchema

    from mlplatform.serving.app import _app_args, autoscaling_problems, check_serve_config

    raw = yaml.safe_load(kuberay("rayservice.yaml")[0]["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(raw)
    check_serve_config(raw)
    served = raw["applications"][0]       # its ModelServer can reach its max_replicas
    assert any("autoscaling_config" in d for d in served["deployments"])
    assert autoscaling_problems(served, _app_args(served["args"])) == []
    app_ = schema.applications[0]
    assert app_.import_path == "mlplatform.serving.app:build_app"
    for dep in app_.deployments:     # the serve_cpu scheme: no CPU, a share of serve_cpu
        assert dep.ray_actor_options.num_cpus == 0, dep.name
        assert 0 < dep.ray_actor_options.resources["serve_cpu"] <= 2, dep.name


def launcher_env_keys(path: Path) -> set[str]:
    return set(re.findall(r"export ((?:MLP|RAY_SERVE)_[A-Z_]+)=", path.read_text()))


def launcher_images(path: Path) -> set[str]:
    return set(re.findall(r"image: (rayproject/ray:\S+)", path.read_text()))


def test_kuberay_agrees_with_the_launcher_yamls():
    aws = yaml.safe_load(CLOUD_YAMLS[0].read_text())
    keys = launcher_env_keys(CLOUD_YAMLS[0])
    assert keys == launcher_env_keys(CLOUD_YAMLS[1])
    images = launcher_images(CLOUD_YAMLS[0])
    assert images == launcher_images(CLOUD_YAMLS[1])
    configmap = kuberay("raycluster.yaml")[0]
    assert set(configmap["data"]) == {k for k in keys if not k.startswith("MLP_SERVE_")}
    # The same ingress as the launcher YAMLs' nodes: HAProxy in throughput mode, on every pod.
    assert {k: v for k, v in configmap["data"].items() if k.startswith("RAY_SERVE_")} == {
        "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    launcher_types = {"head": "head", "cpu-worker": "cpu_worker", "gpu-worker": "gpu_worker"}
    for doc in ray_docs():
        spec = ray_cluster_spec(doc)
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 60 * aws["idle_timeout_minutes"]
        for group_name, group in groups(spec).items():
            where = f"{doc['kind']} {group_name}"
            params = group["rayStartParams"]
            advertised = {"CPU": int(params["num-cpus"])}
            if "num-gpus" in params:
                advertised["GPU"] = int(params["num-gpus"])
            advertised.update(json.loads(json.loads(params.get("resources", '"{}"'))))
            assert advertised == aws["available_node_types"][launcher_types[group_name]][
                "resources"], where
            (container,) = group["template"]["spec"]["containers"]
            assert container["image"] in images, where
            assert {"configMapRef": {"name": "mlplatform-env"}} in container["envFrom"], where
            assert {"secretRef": {"name": "mlplatform-serve-tokens"}} in container["envFrom"], where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert configmap["data"]["MLP_STORAGE_ROOT"] in mounts, where
            if group_name == "gpu-worker":
                assert group["minReplicas"] == 0, where
                assert container["image"].endswith("-gpu"), where


def test_every_config_pins_the_project_version():
    for path in CLOUD_YAMLS:
        assert f"mlplatform-{VERSION}-py3-none-any.whl" in path.read_text(), path.name
    assert f"mlplatform=={VERSION}" in (KUBERAY / "rayjob.yaml").read_text()
    assert f"/v{VERSION}.zip" in (KUBERAY / "rayjob.yaml").read_text()
    raw = yaml.safe_load(kuberay("rayservice.yaml")[0]["spec"]["serveConfigV2"])
    assert raw["applications"][0]["runtime_env"]["pip"] == [f"mlplatform=={VERSION}"]


def test_kuberay_pods_get_the_aws_price_table():
    """MLP_PRICE_TABLE names a file of the mlplatform-prices ConfigMap, mounted in every Ray
    pod, holding cluster/aws-gpu.yaml's prices (the node types KubeRay mirrors)."""
    import posixpath

    from mlplatform.cluster.cost import PriceTable

    env, prices_map = kuberay("raycluster.yaml")[:2]
    assert prices_map["metadata"]["name"] == "mlplatform-prices"
    folder, key = posixpath.split(env["data"]["MLP_PRICE_TABLE"])
    table = PriceTable.from_mapping(yaml.safe_load(prices_map["data"][key]), "ConfigMap")
    aws = PriceTable.from_mapping(yaml.safe_load(CLOUD_YAMLS[0].read_text()), "aws-gpu.yaml")
    assert (table.cpu_hour, table.gpu_hour) == (aws.cpu_hour, aws.gpu_hour)
    for doc in ray_docs():
        for group_name, group in groups(ray_cluster_spec(doc)).items():
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            (container,) = pod["containers"]
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
            assert volumes[mount["name"]]["configMap"] == {"name": "mlplatform-prices"}, (
                doc["kind"], group_name)


# ------------------------------------------------- the RayService vs serve_configs/ -----------
#: Where the RayService's Serve config may differ from serve_configs/fraud-cluster.yaml, and why:
#: the launcher YAMLs install mlplatform on every node; KubeRay pods get it per app.
INTENDED_SERVE_DIFFERENCES = {"runtime_env"}


def test_rayservice_serve_config_is_fraud_cluster_yaml():
    """The RayService embeds serve_configs/fraud-cluster.yaml: the same proxy placement, args
    and deployments (replicas, resources, autoscaling, user_config), differing only in
    :data:`INTENDED_SERVE_DIFFERENCES`."""
    embedded = yaml.safe_load(kuberay("rayservice.yaml")[0]["spec"]["serveConfigV2"])
    shipped = yaml.safe_load((REPO / "serve_configs" / "fraud-cluster.yaml").read_text())
    for key in ("proxy_location", "http_options"):
        assert embedded.get(key) == shipped.get(key), key
    apps = {a["name"]: a for a in shipped["applications"]}
    assert [a["name"] for a in embedded["applications"]] == list(apps)
    for app_ in embedded["applications"]:
        other = apps[app_["name"]]
        for key in sorted((set(app_) | set(other)) - INTENDED_SERVE_DIFFERENCES - {"deployments"}):
            assert app_.get(key) == other.get(key), f"application {app_['name']}: {key}"
        mine = {d["name"]: d for d in app_["deployments"]}
        theirs = {d["name"]: d for d in other["deployments"]}
        assert list(mine) == list(theirs), app_["name"]
        for name, deployment in mine.items():
            assert deployment == theirs[name], f"deployment {name}"
        assert set(app_) - set(other) <= INTENDED_SERVE_DIFFERENCES


@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda p: p.name)
def test_fraud_cluster_yaml_scales_its_ingress_within_the_cpu_workers(path):
    """The Ingress (the deployment that spends the CPU) autoscales on a cluster, and every
    deployment at its max_replicas fits the serve_cpu of the cpu_workers the YAML may start:
    autoscaling never asks for a node the launcher cannot add."""
    from mlplatform.serving.app import most_replicas

    served = yaml.safe_load((REPO / "serve_configs" / "fraud-cluster.yaml").read_text())
    deployments = {d["name"]: d for d in served["applications"][0]["deployments"]}
    assert most_replicas(deployments["Ingress"]) > 1
    assert deployments["Ingress"]["autoscaling_config"]["min_replicas"] == 1
    demand = sum(most_replicas(d) * d["ray_actor_options"]["resources"]["serve_cpu"]
                 for d in deployments.values())
    worker = yaml.safe_load(path.read_text())["available_node_types"]["cpu_worker"]
    assert demand <= worker["max_workers"] * worker["resources"]["serve_cpu"], demand


# ------------------------------------------------------------ mlp cluster up/down-local ------
def test_up_local_cli_refuses_a_cloud_yaml_and_starts_nothing(tmp_path):
    import ray.autoscaler._private.util  # noqa: F401  before CliRunner swaps stderr (Ray's log
    # handler keeps the stream it is created with)

    runner = CliRunner()
    out = runner.invoke(app, ["cluster", "up-local", "--config", str(CLOUD_YAMLS[0]),
                              "--state-dir", str(tmp_path / "state")])
    assert out.exit_code == 1, out.output
    assert "provider.type is 'aws'; up-local runs only `fake_multinode` configs" in out.output
    assert not (tmp_path / "state").exists()
    missing = runner.invoke(app, ["cluster", "up-local", "--config", str(tmp_path / "no.yaml")])
    assert missing.exit_code == 2 and "Invalid value for '--config'" in missing.output
    helped = runner.invoke(app, ["cluster", "up-local", "--help"])
    assert helped.exit_code == 0 and "--state-dir" in helped.output and "--config" in helped.output


def test_down_local_cli_with_no_cluster_says_so_and_exits_0(tmp_path):
    out = CliRunner().invoke(app, ["cluster", "down-local", "--state-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert f"No local cluster is running (no {tmp_path / 'state.json'})" in out.output
    (tmp_path / "state.json").write_text("{not json")
    broken = CliRunner().invoke(app, ["cluster", "down-local", "--state-dir", str(tmp_path)])
    assert broken.exit_code == 1 and "is unreadable" in broken.output
