"""Load a YAML file into a strict pydantic schema, with command-line `key=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Base for every config schema: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config could not be read or does not match its schema; the message names file and field."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from `path`, raising :class:`ConfigError` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...], origin: str = ""
) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict in place; values are parsed as YAML scalars/lists.

    A numeric part indexes a list: `corpora.0.max_docs=100` sets the first corpus's cap.

    `value` goes through `yaml.safe_load`, so `lr=1e-4` is a float, `skills=[qa,ner]` a list and
    `name=null` a None. Intermediate mappings are created as needed.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{origin}override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{origin}override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node: Any = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = _child(node, part, item, origin)
        _assign(node, parts[-1], value, item, origin)
    return data


def _index(node: list, part: str, item: str, origin: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{origin}override {item!r}: {part!r} is not an index of a {len(node)}-item list")
    return int(part)


def _child(node: Any, part: str, item: str, origin: str) -> Any:
    """Step into `node[part]`: a mapping key (created when missing) or, for a list, an index."""
    if isinstance(node, list):
        return node[_index(node, part, item, origin)]
    child = node.get(part)
    if child is None:
        child = node[part] = {}
    if not isinstance(child, dict | list):
        raise ConfigError(f"{origin}override {item!r}: {part!r} is not a mapping")
    return child


def _assign(node: Any, part: str, value: Any, item: str, origin: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, item, origin)] = value
    else:
        node[part] = value


def format_validation_error(exc: ValidationError, origin: str) -> str:
    """Render pydantic errors as `origin: field 'a.b': message (got value)`, one line each."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not in the schema; check its spelling)"
        got = err.get("input")
        got_s = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {got!r})"
        lines.append(f"{origin}: field '{loc}': {msg}{got_s}")
    return "\n".join(lines)


def validate(schema: type[T], data: dict[str, Any], origin: str) -> T:
    """Validate `data` against `schema`, turning pydantic's error into a :class:`ConfigError`."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None


def load_config(path: str | Path, schema: type[T], overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load `path` as `schema`, after applying `overrides` (`key=value`), failing with a named error.

    This is the only way a stage reads its YAML, so a typo or a wrong type stops the command before
    any Ray work starts.
    """
    data = load_yaml(path)
    apply_overrides(data, list(overrides), origin=f"{path}: ")
    return validate(schema, data, str(path))
