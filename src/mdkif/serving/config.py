"""Typed settings of the served app: the `args:` block of a Serve config file (`serve/*.yaml`).

`serve run serve/serve_config.yaml` hands `args` to :func:`mdkif.serving.app.build_app`, which validates
them into :class:`ServeAppConfig` and then checks that every artifact path exists, so a typo or a missing
adapter folder fails before any deployment starts, with the field and the path in the message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mdkif.config import ConfigError, StrictModel, load_yaml, validate
from mdkif.models.config import ModelConfig
from mdkif.rag.config import PASSAGE_CHARS, PASSAGES_K
from mdkif.routing.artifact import ROUTER_FILE, router_folder
from mdkif.serving.protocol import INGRESS_RESERVED_SLOTS, LOOPBACK_HOSTS, LimitsConfig

INGRESS_DEFAULT_CAP = 256  # Serve's own default (5) would queue every request, /healthz too, behind 5
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ADAPTER_CONFIG = "adapter_config.json"
INDEX_MANIFEST = "index_manifest.json"


class ProfileConfig(StrictModel):
    """One routed task profile: where its skill weights come from, and whether it retrieves."""

    router: Path | None = Field(
        None, description="Router artifact folder (router.json + router.safetensors)."
    )
    weights: dict[str, float] | None = Field(
        None, description="Fixed skill weights {skill: w}; others are 0."
    )
    rag: bool = Field(False, description="Retrieve passages for every request of this profile.")
    k: int = Field(PASSAGES_K, ge=1, le=50, description="Passages retrieved per request.")
    description: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> ProfileConfig:
        if self.router is not None and self.weights is not None:
            raise ValueError("give either router or weights, not both")
        return self


class RagServeConfig(StrictModel):
    """The persistent Chroma index the Retriever deployment opens (built by `mdkif rag index`)."""

    persist_dir: Path = Field(description="Index folder (holds index_manifest.json).")
    collection: str | None = Field(None, description="Collection; default: the one the manifest records.")
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    passage_chars: int = Field(PASSAGE_CHARS, ge=50, description="Characters kept per passage in the prompt.")


class BatchingConfig(StrictModel):
    """Continuous batching in the RoutedModel (`mdkif.serving.batcher`): one decode loop per replica that
    requests join at the next token step (off: each request alone, for comparison)."""

    enabled: bool = True
    max_batch_size: int = Field(16, ge=1, le=256, description="most requests decoding at once per replica")


class DeploymentSettings(StrictModel):
    """Replicas, resources and autoscaling of one deployment (passed to `Deployment.options`)."""

    num_replicas: int | Literal["auto"] | None = Field(1, description="Fixed count; null with autoscaling.")
    max_ongoing_requests: int | None = Field(None, ge=1, description="Per-replica concurrency cap.")
    max_queued_requests: int | None = Field(
        None, description="Callers queued beyond that get 503 (-1: no cap)."
    )
    ray_actor_options: dict[str, Any] = Field(default_factory=dict, description="num_cpus, num_gpus, ...")
    autoscaling_config: dict[str, Any] | None = Field(
        None, description="min/max_replicas, target_ongoing_requests"
    )
    health_check_period_s: float | None = Field(None, gt=0)
    graceful_shutdown_timeout_s: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> DeploymentSettings:
        if self.autoscaling_config is not None and isinstance(self.num_replicas, int):
            raise ValueError("set num_replicas to null (or 'auto') when autoscaling_config is given")
        return self

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None and v != {}}


class ServeAppConfig(StrictModel):
    """Everything `build_app` needs: the base model, the skills, the profiles, RAG, limits and deployments."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    model_id: str | None = Field(
        None, description="Served name of the base model (default: the model name's last path part)."
    )
    adapters_dir: Path | None = Field(None, description="Skill adapters folder: <skill>/adapter_config.json.")
    skills: list[str] | None = Field(None, description="Skills to load, in router order (default: all).")
    prompt_format: Literal["auto", "alpaca", "chat"] = Field(
        "auto",
        description="How chat messages reach the model: auto = the skills' training format (skills.json / "
        "their metrics.json), or the chat template when no skills are loaded; alpaca = the last user "
        "message as the instruction, earlier turns as the input; chat = the tokenizer's chat template.",
    )
    profiles: dict[str, ProfileConfig] = Field(default_factory=dict)
    rag: RagServeConfig | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    merged_cache_size: int = Field(
        4,
        ge=0,
        description="Most distinct mixtures whose merged weights are kept (LRU; profiles with equal weights "
        "share one); 1 = one working copy re-merged on every switch; 0 = never merge, serve stacked.",
    )
    merged_cache_mb: float = Field(
        2048.0,
        ge=0,
        allow_inf_nan=False,
        description="Most MiB the merged copies may hold beyond the base weights. Each cached mixture is a "
        "full copy of the adapted layers (SmolLM2-135M fp32, all 7 projections: ~405 MiB; Llama-3-8B bf16: "
        "~13 GiB); a bound below one copy serves single-profile batches stacked, with no copy at all.",
    )
    default_temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="0 = greedy when a request sets none."
    )
    api_key_env: str | None = Field("MDKIF_API_KEY", description="Env var holding the Bearer key (if set).")
    require_api_key: bool = Field(False, description="Refuse to start when the api_key_env var is unset.")
    allowed_hosts: list[str] = Field(
        default_factory=lambda: list(LOOPBACK_HOSTS),
        min_length=1,
        description="Host header values (without port) the API answers; others get 421, which stops DNS "
        "rebinding from a browser page. Add the names clients use when binding beyond loopback; '*' = any.",
    )
    docs: bool = Field(False, description="Serve /docs, /redoc and /openapi.json (off by default).")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads in the model replica.")
    ingress: DeploymentSettings = Field(
        default_factory=DeploymentSettings,
        description="max_ongoing_requests unset: 256 (the ingress only parses, validates and awaits); it may "
        "not be below the RoutedModel's, or the ingress would queue what the model could take",
    )
    routed_model: DeploymentSettings = Field(
        default_factory=DeploymentSettings, description="max_ongoing_requests unset: max(64, max_batch_size)"
    )
    retriever: DeploymentSettings = Field(default_factory=DeploymentSettings)

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, v: dict[str, ProfileConfig]) -> dict[str, ProfileConfig]:
        bad = [n for n in v if not _PROFILE_NAME.match(n)]
        if bad:
            raise ValueError(f"profile names must match {_PROFILE_NAME.pattern}: {bad}")
        return v

    @model_validator(mode="after")
    def _needs(self) -> ServeAppConfig:
        for name, p in self.profiles.items():
            if (p.router is not None or p.weights is not None) and self.adapters_dir is None:
                raise ValueError(f"profile '{name}' routes skills: set adapters_dir")
            if p.rag and self.rag is None:
                raise ValueError(f"profile '{name}' has rag: true but the rag block is null")
        if self.routed_model.max_ongoing_requests is None:
            # A routed_model block that sets only resources keeps a cap that lets batches fill
            # (Serve's own default of 5 would cap every batch at 5).
            self.routed_model.max_ongoing_requests = max(64, self.batching.max_batch_size)
        if self.ingress.max_ongoing_requests is None:
            self.ingress.max_ongoing_requests = max(
                INGRESS_DEFAULT_CAP, self.routed_model.max_ongoing_requests
            )
        if self.ingress.max_ongoing_requests < self.routed_model.max_ongoing_requests:
            raise ValueError(
                f"ingress.max_ongoing_requests ({self.ingress.max_ongoing_requests}) must be >= "
                f"routed_model.max_ongoing_requests ({self.routed_model.max_ongoing_requests}): every request "
                "passes the ingress, which would otherwise queue (health checks included) what the model admits"
            )
        room = self.ingress.max_ongoing_requests - INGRESS_RESERVED_SLOTS
        if room < 1:
            raise ValueError(
                f"ingress.max_ongoing_requests ({self.ingress.max_ongoing_requests}) must leave room for "
                f"generation above the {INGRESS_RESERVED_SLOTS} slots kept for /healthz, /v1/models and /v1/stats"
            )
        if self.limits.max_in_flight is None:
            self.limits.max_in_flight = room
        elif self.limits.max_in_flight > room:
            raise ValueError(
                f"limits.max_in_flight ({self.limits.max_in_flight}) must be <= ingress.max_ongoing_requests - "
                f"{INGRESS_RESERVED_SLOTS} ({room}): the slots above it keep /healthz answering under load"
            )
        if self.batching.enabled and self.routed_model.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"routed_model.max_ongoing_requests ({self.routed_model.max_ongoing_requests}) must be >= "
                f"batching.max_batch_size ({self.batching.max_batch_size}): a replica never sees more "
                "requests at once than it admits"
            )
        return self

    @property
    def served_name(self) -> str:
        return self.model_id or Path(self.model.name.rstrip("/")).name.removesuffix(".gguf")


def _exists(path: Path, what: str, field: str) -> None:
    if not path.exists():
        raise ConfigError(f"serve config: field '{field}': {what} not found at {path}")


def check_artifacts(cfg: ServeAppConfig, base: Path | None = None) -> ServeAppConfig:
    """Make every path absolute (against `base`, default the cwd) and check it exists; names field and path.

    Replicas may start in another working directory, so they only ever see absolute paths.
    """
    base = Path.cwd() if base is None else Path(base)
    data = cfg.model_dump()

    def absolute(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p).resolve()

    skills_found: list[str] = []
    if cfg.adapters_dir is not None:
        root = absolute(cfg.adapters_dir)
        _exists(root, "skill adapters folder", "adapters_dir")
        skills_found = sorted(p.name for p in root.iterdir() if (p / ADAPTER_CONFIG).is_file())
        if not skills_found:
            raise ConfigError(f"serve config: field 'adapters_dir': no <skill>/{ADAPTER_CONFIG} under {root}")
        data["adapters_dir"] = root
        for s in cfg.skills or []:
            if s not in skills_found:
                raise ConfigError(
                    f"serve config: field 'skills': no adapter for {s!r} in {root} ({skills_found})"
                )
    known = cfg.skills or skills_found
    for name, p in cfg.profiles.items():
        if p.router is not None:
            folder = absolute(p.router)
            folder = router_folder(folder)
            _exists(folder / ROUTER_FILE, "router artifact", f"profiles.{name}.router")
            data["profiles"][name]["router"] = folder
        for skill in p.weights or {}:
            if skill not in known:
                raise ConfigError(
                    f"serve config: field 'profiles.{name}.weights.{skill}': unknown skill; known: {known}"
                )
    if cfg.rag is not None:
        folder = absolute(cfg.rag.persist_dir)
        _exists(folder / INDEX_MANIFEST, "RAG index (build it with `mdkif rag index`)", "rag.persist_dir")
        data["rag"]["persist_dir"] = folder
    name = cfg.model.name
    if name.startswith((".", "/", "~")) or name.endswith(".gguf"):
        path = absolute(Path(name).expanduser())
        _exists(path, "model", "model.name")
        data["model"]["name"] = str(path)
    return ServeAppConfig.model_validate(data)


def load_app_config(
    args: dict[str, Any] | ServeAppConfig, origin: str = "serve config args"
) -> ServeAppConfig:
    """Validate a raw `args` mapping (or pass a config through) with the field named on error."""
    if isinstance(args, ServeAppConfig):
        return args
    return validate(ServeAppConfig, dict(args or {}), origin)


def load_serve_file(path: str | Path) -> tuple[dict[str, Any], list[tuple[dict[str, Any], ServeAppConfig]]]:
    """Read a Serve config file: Serve's own schema (http_options, applications) and each app's typed args.

    Returns the raw mapping and, per application, (its raw entry, its validated args). Paths are not
    checked here (see :func:`check_artifacts`), so a test can load every shipped file on a fresh clone.
    """
    from ray.serve.schema import ServeDeploySchema

    data = load_yaml(path)
    try:
        ServeDeploySchema.model_validate(data) if hasattr(ServeDeploySchema, "model_validate") else (
            ServeDeploySchema.parse_obj(data)
        )
    except Exception as exc:  # Ray's schema may be pydantic v1 or v2 depending on the install
        raise ConfigError(f"{path}: not a valid Serve config: {exc}") from None
    apps = []
    for i, app in enumerate(data.get("applications", [])):
        if app.get("import_path") != "mdkif.serving.app:build_app":
            continue
        apps.append((app, load_app_config(app.get("args") or {}, f"{path}: applications[{i}].args")))
    if not apps:
        raise ConfigError(f"{path}: no application with import_path mdkif.serving.app:build_app")
    return data, apps
