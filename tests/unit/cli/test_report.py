"""The CLI's one formatting module: rich tables as plain text, and the demo renderers (issue 10 §6, §9)."""

from __future__ import annotations

from types import SimpleNamespace

from fleetloop.report import miner_report, table


def test_table_is_a_header_a_rule_and_one_line_per_row() -> None:
    lines = table(["family", "n", "note"], [["lead_brake", 1, "[b]x[/b]"], ["total", 10, ""]]).splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["family", "n", "note"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["lead_brake", "1", "[b]x[/b]"]  # cells are text, never rich markup
    assert lines[3].startswith("total") and lines[3].split() == ["total", "10"]
    assert lines[2].index("1") + 1 == lines[3].index("10") + 2  # the other columns are right-aligned
    assert all(line == line.rstrip() for line in lines) and "\x1b" not in "".join(lines)


def test_table_without_rows_is_the_header_and_rule() -> None:
    assert table(["a", "bb"], []).splitlines()[0].split() == ["a", "bb"]
    assert len(table(["a", "bb"], []).splitlines()) == 2


def test_miner_report_renders_from_the_service_public_api() -> None:
    clip = SimpleNamespace(vehicle_id="veh-0001", start_ms=1_780_293_600_000, end_ms=1_780_293_612_000,
                           matched_seconds=12, case_ids=["case-0123456789"])
    scene = SimpleNamespace(name="pedestrian at junction", size=3, dominant_trigger="hard_brake",
                            similar_seconds=1200, expression="agent.pedestrian & junction")
    api = SimpleNamespace(
        miner=SimpleNamespace(mine=lambda request: SimpleNamespace(clips=[clip], plan="bitmap")),
        clusters=lambda request: SimpleNamespace(problems=3, source="cases", scenes=[scene], silhouette=0.5))
    text = miner_report(SimpleNamespace(api=api), "rain")
    assert text.startswith("mine 'rain': 1 clips, 12 matching seconds (bitmap)")
    assert "veh-0001" in text and "06:00:00" in text and "case-012" in text
    assert "problem scenes: 3 problems from cases, 1 clusters (silhouette 0.50)" in text
    assert "1,200" in text and "agent.pedestrian & junction" in text
