"""Parser: precedence, normalisation, names, and errors with positions."""

from __future__ import annotations

import pytest
from fleetloop.labels import load_taxonomy
from fleetloop.query import And, Compare, Not, Or, QueryError, TagAtom, parse
from fleetloop.query.parser import MAX_DEPTH

TX = load_taxonomy()


def atom(name: str) -> TagAtom:
    return TagAtom(TX.tag(name))


def test_not_binds_tighter_than_and_which_binds_tighter_than_or():
    tree = parse("!rain & night | snow & !fog", TX)
    assert tree == Or((And((Not(atom("weather.rain")), atom("light.night"))),
                       And((atom("weather.snow"), Not(atom("weather.fog"))))))


def test_parentheses_override_precedence_and_chains_flatten():
    assert parse("rain & (night | dusk)", TX) == And((atom("weather.rain"),
                                                      Or((atom("light.night"), atom("light.dusk")))))
    assert parse("rain & night & fog", TX) == And((atom("weather.rain"), atom("light.night"), atom("weather.fog")))
    assert parse("((rain))", TX) == atom("weather.rain")
    assert parse("!!rain", TX) == Not(Not(atom("weather.rain")))


def test_the_headline_query_parses_to_canonical_names():
    tree = parse("rain & night & junction.signalized & agent.tricycle & !mode.manual", TX)
    assert str(tree) == "weather.rain & light.night & junction.signalized & agent.tricycle & !mode.manual"


@pytest.mark.parametrize("text", [
    "rain | night & fog", "(rain | night) & fog", "!(rain & night) | !fog", "!(ego.speed_kph > 30)",
    "ego.speed_kph >= 30.5 & agent.pedestrian_count = 3 | agent.lead_ttc_s < 1.5",
    "!(rain | (snow & !(night | dusk)))",
])
def test_normalised_text_parses_back_to_the_same_tree(text):
    tree = parse(text, TX)
    assert parse(str(tree), TX) == tree


def test_comparisons_type_and_round_to_float32():
    tree = parse("ego.speed_kph > 30.1", TX)
    assert isinstance(tree, Compare) and tree.op == ">" and tree.numeric.column == "v_ego_speed_kph"
    assert tree.value == pytest.approx(30.1) and str(tree) == "ego.speed_kph > 30.1"
    assert parse("agent.pedestrian_count == 3", TX).op == "="
    assert parse("agent.lead_ttc_s<-1e0", TX).value == -1.0


def test_names_are_case_insensitive_and_aliases_resolve():
    assert parse("RAIN & Light.Night", TX) == parse("weather.rain & light.night", TX)


@pytest.mark.parametrize("text, position, fragment", [
    ("rain & nigth", 7, "unknown tag 'nigth' at 7; did you mean 'night'?"),
    ("agent.tricycel", 0, "did you mean 'agent.tricycle'"),
    ("rain &", 6, "expected a tag"),
    ("rain night", 5, "unexpected 'night' at 5"),
    ("(rain | snow", 12, "expected ')' to close '(' at 0"),
    ("rain & )", 7, "found ')'"),
    ("rain & 'x'", 7, "unexpected character \"'\" at 7"),
    ("rain; DROP TABLE x", 4, "unexpected character ';' at 4"),
    ("rain > 3", 5, "'weather.rain' is a boolean tag and cannot be compared with '>' at 5"),
    ("night & ego.speed_kph", 8, "'ego.speed_kph' is numeric at 8"),
    ("ego.speed_kph > fast", 16, "expected a number after '>' at 16"),
    ("ego.speed_kph > 1e99", 16, "out of range"),
    ("   ", 0, "empty expression"),
    ("zzzzqqq", 0, "unknown tag 'zzzzqqq' at 0"),
])
def test_errors_carry_position_and_caret(text, position, fragment):
    with pytest.raises(QueryError) as info:
        parse(text, TX)
    err = info.value
    assert err.position == position
    assert fragment in err.message
    lines = str(err).splitlines()
    assert lines[1] == "  " + text and lines[2] == "  " + " " * position + "^"


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(QueryError) as info:
        parse("zzzzqqq", TX)
    assert "did you mean" not in info.value.message


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(QueryError, match="nested deeper"):
        parse("(" * (MAX_DEPTH + 5) + "rain" + ")" * (MAX_DEPTH + 5), TX)
    with pytest.raises(QueryError, match="nested deeper"):
        parse("!" * 1000 + "rain", TX)
