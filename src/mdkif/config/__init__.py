"""Typed configuration: strict pydantic schemas loaded from YAML with `key=value` overrides.

Every YAML the project reads goes through :func:`load_config`, so a bad file fails before Ray starts,
with the file, the dotted field and what was expected in the message.
"""

from mdkif.config.loading import ConfigError, StrictModel, apply_overrides, load_config, load_yaml, validate

__all__ = ["ConfigError", "StrictModel", "apply_overrides", "load_config", "load_yaml", "validate"]
