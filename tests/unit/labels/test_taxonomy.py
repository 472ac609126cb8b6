"""The packaged taxonomy: its rules, its validation, and that every tag is produced."""

from __future__ import annotations

import copy

import pytest
import yaml
from fleetloop.labels import Tag, TaxonomyError, load_taxonomy, parse_taxonomy
from fleetloop.labels.taxonomy import DEFAULT_PATH

from tests.oracles.labelers import LABELERS


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(DEFAULT_PATH.read_text())


def test_packaged_taxonomy_is_valid_and_large_enough():
    tx = load_taxonomy()
    assert tx.version >= 1
    assert len(tx.active_tags) >= 60
    assert len({t.bit for t in tx.tags}) == len(tx.tags)
    families = {t.family for t in tx.tags}
    assert {"environment", "road", "agents", "ego", "perception", "mode", "data"} == families
    assert set(LABELERS) == families
    for required in ("weather.rain", "light.night", "junction.signalized", "agent.tricycle", "mode.manual",
                     "agent.pedestrian_from_occlusion", "ego.u_turn", "perception.rare_object"):
        assert isinstance(tx.resolve(required), Tag)
    assert tx.resolve("rain") is tx.resolve("weather.rain")
    assert tx.resolve("ego.speed_kph").column == "v_ego_speed_kph"


def test_thresholds_have_a_rationale_comment_each():
    # The rule "thresholds live in YAML with the rationale next to each number".
    lines = DEFAULT_PATH.read_text().splitlines()
    start = lines.index("thresholds:")
    end = lines.index("tags:")
    for line in lines[start + 1:end]:
        if line.strip() and not line.strip().startswith("#"):
            assert "#" in line, f"threshold without rationale: {line.strip()}"


def test_bitset_helper_sets_the_named_bits():
    tx = load_taxonomy()
    assert tx.bitset(["weather.rain", "mode.manual"]) == (1 << 2) | (1 << 64)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["tags"][1].update(bit=0), "bit position"),
    (lambda d: d["tags"][0].update(bit=256), "bits must lie"),
    (lambda d: d["tags"][1].update(aliases=["rain"]), "used twice"),
    (lambda d: d["tags"][0].update(since=99), "since"),
    (lambda d: d["tags"][0].update(name="Weather Rain"), "lower-case"),
    (lambda d: d["numeric"][1].update(column="v_ego_speed_kph"), "columns must be unique"),
])
def test_invalid_taxonomies_are_rejected(raw, mutate, message):
    data = copy.deepcopy(raw)
    mutate(data)
    with pytest.raises(TaxonomyError, match=message):
        parse_taxonomy(data)


def test_a_new_tag_appends_a_bit_and_bumps_the_version(raw):
    data = copy.deepcopy(raw)
    data["version"] = 2
    data["tags"].append({"name": "road.bridge", "bit": 78, "family": "road", "since": 2})
    tx = parse_taxonomy(data)
    assert tx.tag("road.bridge").word == 1 and tx.tag("road.bridge").since == 2
