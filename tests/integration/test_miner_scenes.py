"""Mining against the simulator's ground truth, problem scenes and curricula."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fleetloop import topics
from fleetloop.labels import LABEL_TABLE, load_taxonomy
from fleetloop.labels.batch import SecondParts, label_seconds
from fleetloop.query import MineRequest
from fleetloop.query.index import HOUR_MS, build_hour_index
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig
from fleetloop.v1 import common_pb2 as pb
from fleetloop.v1 import miner_pb2, miner_pb2_grpc

from services.label_indexer.service import MIGRATIONS, store_hour_index
from services.miner.engine import Miner
from services.miner.scenes import Curriculum, Problem, SceneConfig, cluster_problems, manifest_table
from services.miner.service import MinerService
from tests.conftest import truncate_owned_tables, wait_until

TX = load_taxonomy()
KIND = {topics.HEARTBEAT: "heartbeat", topics.POSE: "pose", topics.PERCEPTION: "perception"}
VARIANTS = ("unprotected_left", "occluded_pedestrian", "unknown_object")


# -- pure ----------------------------------------------------------------------------------------
def test_two_obvious_scene_groups_are_found_and_named_by_their_dominant_tags():
    config = SceneConfig.load()
    tags = ["weather.rain", "light.night", "agent.pedestrian", "turn.unprotected"]
    rng = np.random.default_rng(1)
    rainy_night = np.clip(np.array([0.9, 0.9, 0.1, 0.0]) + rng.normal(0, 0.05, (10, 4)), 0, 1)
    left_turns = np.clip(np.array([0.0, 0.1, 0.2, 0.8]) + rng.normal(0, 0.05, (8, 4)), 0, 1)
    problems = [Problem(f"a{i}", "veh", i, "hard_brake") for i in range(10)]
    problems += [Problem(f"b{i}", "veh", i, "scene_complexity") for i in range(8)]
    result = cluster_problems(problems, np.vstack([rainy_night, left_turns]), tags, config)
    assert len(result.scenes) == 2 and result.silhouette > 0.5
    big, small = result.scenes
    assert big.members == [f"a{i}" for i in range(10)]
    assert sorted(big.dominant_tags) == ["light.night", "weather.rain"]     # ordered by share
    assert big.name == f"hard_brake: {big.dominant_tags[0]} & {big.dominant_tags[1]}"
    assert small.expression == "turn.unprotected" and small.dominant_trigger == "scene_complexity"


def test_curriculum_is_data_and_exports_a_weighted_manifest():
    curriculum = Curriculum.from_yaml("""
name: left turns first
stages:
  - {scene: unprotected left turns, expression: "turn.unprotected & ego.turn_left", samples: 5000}
  - {scene: sudden pedestrians, samples: 2000, weight: 10}
""")
    assert [(s.scene, s.samples, s.weight) for s in curriculum.stages] == [
        ("unprotected left turns", 5000, 1.0), ("sudden pedestrians", 2000, 10.0)]
    table = manifest_table([(1, curriculum.stages[0], "x", [("veh-1", 0, 4000)]),
                            (2, curriculum.stages[1], "y", [("veh-2", 1000, 2000), ("veh-3", 0, 1000)])])
    assert table.column("weight").to_pylist() == [1.0, 10.0, 10.0] and table.num_rows == 3
    for bad in ("stages: []", "name: x", "stages: [{scene: a}]", "stages: [{scene: a, samples: 0}]"):
        with pytest.raises(ValueError):
            Curriculum.from_yaml(bad)


# -- against the simulator -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fleet(warehouse):
    """12 vehicles x 2 h (cloudy then rain), scene_complexity incidents, labelled and indexed."""
    incidents = [ScheduledIncident("scene_complexity", i % 12, 200 + 300 * i, params={"variant": VARIANTS[i % 3]})
                 for i in range(20)]
    sim = FleetSimulator(SimConfig(vehicles=12, duration_s=7200, seed=17, incidents=incidents))
    parts: dict[tuple[str, int], dict] = {}
    for second in sim.seconds():
        for topic, env in second.messages:
            if topic in KIND:
                parts.setdefault((env.vehicle_id, env.event_time_ms), {})[KIND[topic]] = getattr(env, KIND[topic])
    labels = label_seconds([SecondParts(v, t, p.get("heartbeat"), p.get("pose"), p.get("perception"))
                            for (v, t), p in sorted(parts.items())], TX)
    warehouse.migrate("label_indexer", MIGRATIONS)
    truncate_owned_tables(warehouse, (LABEL_TABLE, "dwd_label_index"))
    warehouse.insert_arrow(LABEL_TABLE, labels.to_arrow(TX))
    for hour in sorted({int(t - t % HOUR_MS) for t in labels.ts_ms}):
        keep = (labels.ts_ms >= hour) & (labels.ts_ms < hour + HOUR_MS)
        store_hour_index(warehouse, build_hour_index(hour, np.array(labels.vehicle_id, object)[keep],
                                                     labels.ts_ms[keep], labels.t[keep], labels.k[keep],
                                                     np.array(labels.park, object)[keep]), version=1)
    return sim, Miner(warehouse, TX)


def overlaps(clips, vehicle: str, start: int, end: int) -> bool:
    return any(c.vehicle_id == vehicle and c.start_ms < end and c.end_ms > start for c in clips)


@pytest.mark.integration
def test_mined_scenes_match_the_injected_incidents(fleet):
    sim, miner = fleet
    truth = sim.ground_truth.incidents
    for expression, variant in (("turn.unprotected", "unprotected_left"),
                                ("agent.pedestrian_from_occlusion", "occluded_pedestrian"),
                                ("agent.unknown & perception.low_confidence", "unknown_object")):
        incidents = [i for i in truth if i.kind == "scene_complexity" and i.detail.get("variant") == variant]
        assert incidents, variant
        clips = miner.mine(MineRequest(expression, limit=10_000)).clips
        for incident in incidents:        # every injected scene is found ...
            assert overlaps(clips, incident.vehicle_id, incident.start_ms, incident.end_ms + 1000), incident
        for clip in clips:                # ... and nothing else carries it
            assert any(i.vehicle_id == clip.vehicle_id and clip.start_ms < i.end_ms + 1000
                       and clip.end_ms > i.start_ms for i in incidents), clip


@pytest.mark.integration
def test_mined_rain_equals_the_simulated_weather(fleet):
    sim, miner = fleet
    weather = sim.cities[0].weather
    start = sim.cfg.start_ms
    assert weather[:2] == [pb.WEATHER_CLOUDY, pb.WEATHER_RAIN]
    clips = miner.mine(MineRequest("rain", limit=10_000)).clips
    assert clips and all(c.start_ms >= start + HOUR_MS and c.end_ms <= start + 2 * HOUR_MS for c in clips)
    rainy_seconds = miner.count(MineRequest("rain"))["seconds"]
    perceived = miner.count(MineRequest("!data.no_perception", start_ms=start + HOUR_MS))["seconds"]
    assert rainy_seconds == perceived > 0
    assert miner.count(MineRequest("cloudy & rain"))["seconds"] == 0


@pytest.mark.integration
async def test_clusters_and_curriculum_over_grpc(fleet, warehouse, settings):
    sim, _ = fleet
    # The problems come from case-assembler's trigger_events (its own schema); no cases yet.
    warehouse.migrate("case_assembler", Path("services/case_assembler/migrations"))
    truncate_owned_tables(warehouse, ("trigger_events", "cases", "case_"))
    warehouse.insert_rows("trigger_events", [(f"t{n}", i.vehicle_id, i.kind, 4, i.start_ms, i.start_ms, i.start_ms)
                                             for n, i in enumerate(sim.ground_truth.incidents) if i.vehicle_id],
                          ["trigger_id", "vehicle_id", "trigger", "category", "onset", "peak", "end"])
    service = MinerService(settings, warehouse, bus=None)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await wait_until(lambda: asyncio.sleep(0, service.grpc_port != 0))
    try:
        async with __import__("grpc").aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = miner_pb2_grpc.MinerServiceStub(channel)
            clusters = await stub.Clusters(miner_pb2.ClustersRequest(examples=3))
            injected = len({(i.vehicle_id, i.start_ms) for i in sim.ground_truth.incidents if i.vehicle_id})
            assert clusters.source == "trigger_events" and clusters.problems == injected > 10
            assert sum(s.size for s in clusters.scenes) == injected and all(s.name for s in clusters.scenes)
            mined = [s for s in clusters.scenes if s.expression]
            assert mined and all(s.similar_seconds > 0 and s.examples for s in mined)
            response = await stub.Curriculum(miner_pb2.CurriculumRequest(yaml=f"""
name: demo
stages:
  - {{scene: left turns, expression: turn.unprotected, samples: 50}}
  - {{scene: "{mined[0].name}", samples: 5, weight: 10}}
"""))
            manifest = pq.read_table(io.BytesIO(response.manifest_parquet))
            assert [s.clips for s in response.stages] == [manifest.column("stage").to_pylist().count(n)
                                                          for n in (1, 2)]
            assert set(manifest.column("weight").to_pylist()) <= {1.0, 10.0} and manifest.num_rows > 0
    finally:
        stop.set()
        await task
        truncate_owned_tables(warehouse, ("trigger_events",))


def test_curriculum_from_the_wire_is_bounded_and_typed():
    """An alias bomb is refused before it expands; NaN weights and unknown keys are refused with the key path."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(7)) + "stages: [{scene: s, samples: 1}]\n"
    assert len(bomb) < 600
    with pytest.raises(ValueError, match="expan|alias|nodes"):
        Curriculum.from_yaml(bomb)
    with pytest.raises(ValueError, match=r"stages\.0\.weight"):
        Curriculum.from_yaml("stages: [{scene: s, samples: 1, weight: .nan}]")
    with pytest.raises(ValueError, match=r"stages\.0\.colour"):
        Curriculum.from_yaml("stages: [{scene: s, samples: 1, colour: red}]")
    with pytest.raises(ValueError, match="curriculum"):
        Curriculum.from_yaml("stages: [{scene: s, samples: 1")   # a YAML syntax error names the source
