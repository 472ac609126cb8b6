"""Configuration: the one YAML loader for every component, and the environment read once at the edge.

Every configuration file is read by `load_yaml(path, Model)` (or `parse_yaml(text, Model)` for text that
arrives over the wire) into a frozen pydantic model that refuses unknown keys; whatever is wrong with
it comes back as one `ConfigError` naming the file, the key path and the problem. The YAML is parsed
safely: plain data only, and aliases may not expand the document beyond `MAX_YAML_NODES` nodes (a few
hundred bytes of nested aliases otherwise build gigabytes).

Logic never reads the environment; `Settings.from_env()` is called by the CLI and by service entry
points, and the resulting object is passed in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

EMBEDDED = "embedded"

# Nodes a document may hold once its aliases are expanded. The largest shipped file has a few
# thousand; a hostile curriculum of 8 alias levels expands to ~10^8.
MAX_YAML_NODES = 100_000

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the source, the key path and what is wrong."""


class ConfigModel(BaseModel):
    """Base of every component's parameters: immutable; an unknown key, NaN or infinity is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class VersionedConfig(ConfigModel):
    """A configuration file with a `version` that results are stamped with. The loaded version is the
    file's string plus the first 8 hex digits of a hash of the whole content ("1+3fa2c9e1"), so an
    edit without a version bump still changes the stamp. `source` names where it came from, in errors."""

    DEFAULT_SOURCE: ClassVar[str] = "config"
    version: str
    _source: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _version_with_content_hash(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and isinstance(raw.get("version"), str):
            digest = hashlib.sha1(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:8]
            return {**raw, "version": f"{raw['version']}+{digest}"}
        return raw

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str | None = None) -> Self:
        """Validate a parsed configuration. Raises ConfigError naming `source` and the bad key."""
        source = source or cls.DEFAULT_SOURCE
        config = validate(raw, cls, source=source)
        config._source = source
        return config

    @property
    def source(self) -> str:
        return self._source or self.DEFAULT_SOURCE


def load_yaml(path: str | Path, model: type[M], *, max_nodes: int = MAX_YAML_NODES) -> M:
    """Read the YAML file at `path` and validate it as `model`; raises ConfigError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_yaml(text, model, source=str(path), max_nodes=max_nodes)


def parse_yaml(text: str, model: type[M], *, source: str = "<yaml>", max_nodes: int = MAX_YAML_NODES) -> M:
    """Parse YAML `text` safely and validate it as `model`; `source` names it in errors."""
    return validate(safe_load(text, source=source, max_nodes=max_nodes), model, source=source)


def validate(data: Any, model: type[M], *, source: str, prefix: str = "") -> M:
    """Validate already-parsed `data` as `model`; errors name `source` and the key path below `prefix`."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source=source, prefix=prefix)) from None


def describe_errors(exc: ValidationError, *, source: str, prefix: str = "",
                    rename: Mapping[str, str] | None = None) -> str:
    """One line per problem: `source: key.path: what is wrong (got value)`; `rename` maps a top-level
    field to the name the user wrote (an environment variable)."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        # pydantic marks a bad mapping key by a trailing "[key]"; the path already ends in that key.
        bad_key = loc[-1:] == ["[key]"]
        loc = loc[:-1] if bad_key else loc
        if rename and loc:
            loc[0] = rename.get(loc[0], loc[0])
        path = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"{source}: {path}: unknown key")
        elif error["type"] == "missing":
            lines.append(f"{source}: {path}: required key is missing")
        else:
            what = f"not an allowed key: {error['msg']}" if bad_key else error["msg"]
            lines.append(f"{source}: {path}: {what} (got {_short(error.get('input'))})")
    return "\n".join(lines)


def safe_load(text: str, *, source: str = "<yaml>", max_nodes: int = MAX_YAML_NODES) -> Any:
    """Plain data from YAML `text`: no tags beyond the safe ones, no recursive or duplicate keys, and at
    most `max_nodes` nodes once aliases are expanded. Raises ConfigError."""
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source=source, max_nodes=max_nodes)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, *, source: str, max_nodes: int) -> None:
    """Count the nodes `root` stands for with every alias expanded, without expanding them.

    Aliases share their anchor's node object, so each distinct node's expanded size is computed once
    (memoised by identity): the cost is linear in the document's text, not in its expansion.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded(node: yaml.Node, path: str) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"{source}: {path or '(top level)'}: an alias refers to itself")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                total += expanded(item, f"{path}[{index}]")
                _refuse_over(total, path, source=source, max_nodes=max_nodes)
        elif isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                child = f"{path}.{name}" if path else str(name)
                if isinstance(key_node, yaml.ScalarNode) and name != "<<":
                    if name in seen:
                        raise ConfigError(f"{source}: {child}: key given twice")
                    seen.add(name)
                total += expanded(key_node, child) + expanded(value_node, child)
                _refuse_over(total, path, source=source, max_nodes=max_nodes)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    expanded(root, "")


def _refuse_over(total: int, path: str, *, source: str, max_nodes: int) -> None:
    if total > max_nodes:
        raise ConfigError(f"{source}: {path or '(top level)'}: aliases expand the document beyond "
                          f"{max_nodes} nodes")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's complaint and its line/column, without the traceback."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Settings(BaseModel):
    """Where the parts of the loop live, plus service-wide knobs (the one list of them; the environment
    names that set each are `EnvironmentSettings.variable_names()`).

    `kafka_bootstrap_servers`, `redis_url` = "embedded" start local children; an empty
    `clickhouse_url` / `object_store_url` means "under `data_dir`" (Settings.from_env fills them in).
    Immutable: derive a changed copy with `settings.model_copy(update={...})`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kafka_bootstrap_servers: str = EMBEDDED
    clickhouse_url: str = ""
    redis_url: str = EMBEDDED
    data_dir: Path = Path(".fleetloop")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    consumer_batch_max: int = 5000
    consumer_poll_ms: int = 200
    # "event": monitors follow data time (simulation, replay); "live": wall clock moves them through silence.
    monitor_clock: str = "event"
    object_store_url: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (default: the process environment); see `EnvironmentSettings`."""
        env = EnvironmentSettings.read(os.environ if environ is None else environ)
        values = {name: getattr(env, name) for name in cls.model_fields}
        data_dir = env.data_dir
        values["clickhouse_url"] = env.clickhouse_url or f"chdb://{(data_dir / 'warehouse').resolve()}"
        values["object_store_url"] = env.object_store_url or (data_dir / "objects").resolve().as_uri()
        return cls(**values)

    def with_urls(self, *, kafka: str | None = None, clickhouse: str | None = None,
                  redis: str | None = None) -> Settings:
        """A copy with resolved URLs (the embedded launcher fills in real addresses)."""
        return self.model_copy(update={
            "kafka_bootstrap_servers": kafka or self.kafka_bootstrap_servers,
            "clickhouse_url": clickhouse or self.clickhouse_url,
            "redis_url": redis or self.redis_url,
        })


class EnvironmentSettings(Settings, BaseSettings):
    """The environment variables fleetloop reads: `FLEETLOOP_<FIELD>` for each field of Settings, except
    the three conventional names of the outside services (KAFKA_BOOTSTRAP_SERVERS, CLICKHOUSE_URL, REDIS_URL).
    """

    model_config = SettingsConfigDict(env_prefix="FLEETLOOP_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(EMBEDDED, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS"))
    clickhouse_url: str = Field("", validation_alias=AliasChoices("CLICKHOUSE_URL"))
    redis_url: str = Field(EMBEDDED, validation_alias=AliasChoices("REDIS_URL"))

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> EnvironmentSettings:
        """Validate the fleetloop variables of `environ`; raises ConfigError naming the bad variable."""
        source = _MappingEnvSource(cls, environ)
        try:
            return cls(**source())
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, source="environment", rename=cls.variable_names())) from None

    @classmethod
    def variable_names(cls) -> dict[str, str]:
        """Field name -> the environment variable that sets it."""
        names = {}
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            names[name] = str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"FLEETLOOP_{name.upper()}"
        return names


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ (tests and the
    CLI hand in a modified copy)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._environ.items()}
