"""The one configuration loader: typed models, errors that name the key, safe YAML, the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleetloop.config import ConfigError, ConfigModel, Settings, load_yaml, parse_yaml, safe_load
from pydantic import Field, ValidationError


class Limits(ConfigModel):
    speed_mps: float = Field(gt=0, le=100)


class Component(ConfigModel):
    name: str
    limits: Limits


def alias_bomb(levels: int, fan_out: int = 9) -> str:
    """A document of `levels` anchors, each a list of `fan_out` aliases of the one before:
    a few hundred bytes that expand to fan_out**levels leaves."""
    names = "abcdefghijklmnop"
    lines = ["a: &a [" + ",".join(["x"] * fan_out) + "]"]
    for level in range(1, levels):
        name, below = names[level], names[level - 1]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{below}"] * fan_out) + "]")
    return "\n".join(lines) + "\n"


def test_valid_document_is_a_frozen_model() -> None:
    component = parse_yaml("name: a\nlimits: {speed_mps: 30}\n", Component)
    assert component.limits.speed_mps == 30.0
    with pytest.raises(ValidationError, match="frozen"):
        component.name = "b"  # type: ignore[misc]


def test_bad_value_names_file_and_key_path(tmp_path: Path) -> None:
    path = tmp_path / "component.yaml"
    path.write_text("name: a\nlimits: {speed_mps: -3}\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path, Component)
    message = str(err.value)
    assert str(path) in message and "limits.speed_mps" in message and "greater than 0" in message
    assert "-3" in message


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: limits\.speed_kmh: unknown key"):
        parse_yaml("name: a\nlimits: {speed_mps: 3, speed_kmh: 10}\n", Component, source="c.yaml")


def test_missing_key_and_duplicate_key_are_named() -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: limits: required key is missing"):
        parse_yaml("name: a\n", Component, source="c.yaml")
    with pytest.raises(ConfigError, match=r"c\.yaml: name: key given twice"):
        parse_yaml("name: a\nname: b\nlimits: {speed_mps: 3}\n", Component, source="c.yaml")


def test_syntax_error_and_unsafe_tag_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML: .* line 2"):
        parse_yaml("name: [a\nlimits: 1\n", Component, source="c.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        safe_load("!!python/object/apply:os.system ['true']\n", source="c.yaml")


def test_alias_bomb_is_refused_by_node_count() -> None:
    # 8 levels of 9 aliases: under 300 bytes that expand to 9**8 = 43 million leaves.
    bomb = alias_bomb(levels=8)
    assert len(bomb) < 300
    with pytest.raises(ConfigError, match="aliases expand the document beyond 100000 nodes"):
        safe_load(bomb, source="curriculum.yaml")


def test_alias_bound_counts_expanded_nodes() -> None:
    # 3 levels of 9: root 1 + keys 3 + a (1 + 9) + b (1 + 9 x 10) + c (1 + 9 x 91) = 925 expanded nodes.
    small = alias_bomb(levels=3)
    assert len(safe_load(small)["c"]) == 9
    safe_load(small, max_nodes=925)
    with pytest.raises(ConfigError, match="beyond 924 nodes"):
        safe_load(small, max_nodes=924)


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match="refers to itself"):
        safe_load("a: &a [1, *a]\n", source="c.yaml")


def test_settings_defaults_match_the_documented_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap_servers == "embedded" and settings.redis_url == "embedded"
    assert settings.data_dir == Path(".fleetloop")
    assert settings.clickhouse_url == f"chdb://{(Path('.fleetloop') / 'warehouse').resolve()}"
    assert settings.object_store_url == (Path(".fleetloop") / "objects").resolve().as_uri()
    assert (settings.grpc_host, settings.grpc_port) == ("127.0.0.1", 50051)
    assert (settings.consumer_batch_max, settings.consumer_poll_ms, settings.monitor_clock) == (5000, 200, "event")


def test_settings_read_every_variable(tmp_path: Path) -> None:
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": "broker:9092", "CLICKHOUSE_URL": "http://ch:8123", "REDIS_URL": "redis://r:6379",
        "FLEETLOOP_DATA_DIR": str(tmp_path), "FLEETLOOP_GRPC_HOST": "0.0.0.0", "FLEETLOOP_GRPC_PORT": "6000",
        "FLEETLOOP_CONSUMER_BATCH_MAX": "7", "FLEETLOOP_CONSUMER_POLL_MS": "9", "FLEETLOOP_MONITOR_CLOCK": "live",
        "FLEETLOOP_OBJECT_STORE_URL": "file:///objects", "UNRELATED": "ignored",
    }
    assert Settings.from_env(environ) == Settings(
        kafka_bootstrap_servers="broker:9092", clickhouse_url="http://ch:8123", redis_url="redis://r:6379",
        data_dir=tmp_path, grpc_host="0.0.0.0", grpc_port=6000, consumer_batch_max=7, consumer_poll_ms=9,
        monitor_clock="live", object_store_url="file:///objects")
    # The data dir moves the embedded defaults with it.
    moved = Settings.from_env({"FLEETLOOP_DATA_DIR": str(tmp_path)})
    assert moved.clickhouse_url == f"chdb://{(tmp_path / 'warehouse').resolve()}"
    assert moved.object_store_url == (tmp_path / "objects").resolve().as_uri()


def test_settings_bad_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="environment: FLEETLOOP_GRPC_PORT: .*integer"):
        Settings.from_env({"FLEETLOOP_GRPC_PORT": "port"})


def test_replay_config_refuses_an_unknown_section_naming_the_file() -> None:
    from fleetloop.replay.config import DEFAULT_PATH, load_config

    with pytest.raises(ConfigError, match=rf"{DEFAULT_PATH}: serach: unknown key"):
        load_config(overrides={"serach": {"method": "mppi"}})


def test_taxonomy_entry_of_the_wrong_shape_names_its_key_path(tmp_path: Path) -> None:
    from fleetloop.labels.taxonomy import DEFAULT_PATH, load_taxonomy

    path = tmp_path / "taxonomy.yaml"
    path.write_text(DEFAULT_PATH.read_text(encoding="utf-8").replace("bit: 2,", "bit: two,", 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{path}: tags\.\d+\.bit: .*valid integer"):
        load_taxonomy(path)
