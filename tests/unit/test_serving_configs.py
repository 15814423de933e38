"""Every YAML in serve/ loads; missing artifacts fail at build time naming the field and the path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdkif.config import ConfigError
from mdkif.serving.config import check_artifacts, load_app_config, load_serve_file

SERVE_DIR = Path(__file__).resolve().parents[2] / "serve"
SHIPPED = sorted(SERVE_DIR.glob("*.yaml"))


def test_serve_folder_has_configs():
    assert {p.name for p in SHIPPED} >= {"serve_config.yaml", "serve_tiny.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_serve_config_loads(path):
    data, apps = load_serve_file(path)
    assert path.read_text().startswith("# "), "a config opens with the command that runs it"
    for raw, cfg in apps:
        assert raw["import_path"] == "mdkif.serving.app:build_app"
        assert cfg.profiles, "ship at least one routed profile"
        # Loopback by default; a config that listens on every interface must require an API key.
        assert data["http_options"]["host"] == "127.0.0.1" or cfg.require_api_key, path.name


def _tiny_adapters(tmp_path: Path) -> Path:
    for skill in ("a", "b"):
        (tmp_path / "adapters" / skill).mkdir(parents=True)
        (tmp_path / "adapters" / skill / "adapter_config.json").write_text("{}")
    return tmp_path / "adapters"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"adapters_dir": "nope"}, "adapters_dir"),
        ({"adapters_dir": "ADAPTERS", "profiles": {"p": {"router": "missing_router"}}}, "profiles.p.router"),
        ({"adapters_dir": "ADAPTERS", "profiles": {"p": {"weights": {"zz": 1.0}}}}, "profiles.p.weights.zz"),
        ({"rag": {"persist_dir": "no_index"}}, "rag.persist_dir"),
        ({"model": {"name": "./no_model_dir"}}, "model.name"),
    ],
)
def test_missing_artifacts_name_field_and_path(tmp_path, args, field):
    adapters = _tiny_adapters(tmp_path)
    if args.get("adapters_dir") == "ADAPTERS":
        args = {**args, "adapters_dir": str(adapters)}
    cfg = load_app_config(args)
    with pytest.raises(ConfigError) as info:
        check_artifacts(cfg, base=tmp_path)
    assert f"field '{field}'" in str(info.value)


def test_build_app_fails_before_deploying(tmp_path):
    from mdkif.serving.app import build_app

    with pytest.raises(ConfigError, match="adapters_dir.*not found"):
        build_app({"adapters_dir": str(tmp_path / "absent")})


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"profiles": {"p": {"weights": {"a": 1}}}}, "set adapters_dir"),
        ({"profiles": {"p": {"rag": True}}}, "rag block is null"),
        ({"profiles": {"bad name": {}}}, "profile names"),
        (
            {"profiles": {"p": {"weights": {"a": 1}, "router": "x"}}, "adapters_dir": "x"},
            "either router or weights",
        ),
        (
            {"batching": {"max_batch_size": 32}, "routed_model": {"max_ongoing_requests": 8}},
            "max_ongoing_requests",
        ),
        (
            {"routed_model": {"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}},
            "autoscaling_config",
        ),
        ({"limits": {"max_tokens": 0}}, "limits.max_tokens"),
        ({"typo": 1}, "unknown field"),
    ],
)
def test_bad_args_are_refused(args, needle):
    with pytest.raises(ConfigError, match=needle):
        load_app_config(args)


def test_paths_become_absolute(tmp_path):
    adapters = _tiny_adapters(tmp_path)
    cfg = check_artifacts(
        load_app_config({"adapters_dir": "adapters", "profiles": {"p": {"weights": {"a": 1}}}}), base=tmp_path
    )
    assert cfg.adapters_dir == adapters.resolve() and cfg.served_name == "smollm2-135m-instruct"


def test_routed_model_block_with_only_resources_keeps_a_batch_sized_cap():
    cfg = load_app_config({"routed_model": {"ray_actor_options": {"num_cpus": 0.5}}})
    assert cfg.routed_model.max_ongoing_requests == 64
    big = load_app_config({"batching": {"max_batch_size": 128}, "routed_model": {"num_replicas": 2}})
    assert big.routed_model.max_ongoing_requests == 128


def test_the_retriever_deployment_keeps_its_serve_name():
    # The class is named apart from the rag.types.Retriever protocol; Serve still lists it as "Retriever".
    from mdkif.serving.deployments import RetrieverDeployment, RoutedModel

    assert RetrieverDeployment.name == "Retriever" and RoutedModel.name == "RoutedModel"
