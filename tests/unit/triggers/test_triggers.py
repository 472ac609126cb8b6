"""Each built-in trigger fires once on its synthetic episode and stays silent on a near-threshold
normal one; configuration can disable a trigger or move a threshold without code edits."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fleetloop.codec.limits import LIMITS
from fleetloop.config import ConfigError
from fleetloop.triggers import REGISTRY, Category, TriggerRunner, detect_recording, load_config
from fleetloop.triggers import synthetic as syn
from fleetloop.triggers.config import DEFAULT_PATH, TriggerConfig, merge
from fleetloop.v1 import common_pb2 as pb

CFG = load_config()
Inject = Callable[[syn.SyntheticDrive], None]


def names(drive: syn.SyntheticDrive, config: TriggerConfig = CFG) -> list[str]:
    return [e.trigger for e in detect_recording(drive.envelopes(), config)]


def run(inject: Inject, seconds: int = 240, seed: int = 1, config: TriggerConfig = CFG) -> list[str]:
    d = syn.cruise("veh-1", seconds, seed=seed)
    inject(d)
    return names(d, config)


def errors(times: list[float], codes: list[str] | None = None) -> Inject:
    def inject(d: syn.SyntheticDrive) -> None:
        for k, t in enumerate(times):
            code = codes[k] if codes else "E42"
            syn.event(d, t, pb.EVENT_KIND_ERROR_CODE, module="planning", code=code)
    return inject


def costs(gap: float, seconds: range) -> Inject:
    def inject(d: syn.SyntheticDrive) -> None:
        for s in seconds:
            d.costs[s] = [1.0, 1.0 + gap]
    return inject


def maneuvers(seq: list[tuple[int, str]]) -> Inject:
    def inject(d: syn.SyntheticDrive) -> None:
        for s, m in seq:
            for k in range(s, d.seconds):
                d.maneuver[k] = m
    return inject


def scene(turn: bool = False, oncoming_mps: float = 0.0, emerged_at_m: float | None = None,
          unknown_conf: float | None = None) -> Inject:
    def inject(d: syn.SyntheticDrive) -> None:
        s = 50
        d.unprotected_turn[s] = turn
        if oncoming_mps:  # ego drives 10 m/s: relative closing = ego + oncoming ground speed
            d.objects[s] = d.objects[s] + [syn.PO(rel_x_m=25, rel_y_m=3.5, rel_vx_mps=-10.0 - oncoming_mps,
                                                  object_class=pb.OBJECT_CLASS_CAR, confidence=0.9)]
        if emerged_at_m is not None:
            d.objects[s] = d.objects[s] + [syn.PO(rel_x_m=emerged_at_m, rel_y_m=3.0, rel_vx_mps=-10.0,
                                                  object_class=pb.OBJECT_CLASS_PEDESTRIAN, confidence=0.8,
                                                  emerged_from_occlusion=True)]
        if unknown_conf is not None:
            d.objects[s] = d.objects[s] + [syn.PO(rel_x_m=30, rel_y_m=5.0, object_class=pb.OBJECT_CLASS_UNKNOWN,
                                                  rel_vx_mps=-10.0, confidence=unknown_conf)]
    return inject


CASES: dict[str, tuple[Inject, Inject]] = {  # trigger → (fires once, near-threshold normal stays silent)
    "hard_brake": (lambda d: syn.hard_decel(d, 40.3, 5.0, 1.0, lead_m=15.0),
                   lambda d: syn.hard_decel(d, 40.3, 3.8, 2.0, lead_m=15.0)),
    "phantom_stop": (lambda d: syn.hard_decel(d, 40.3, 5.0, 1.0, lead_m=None),
                     lambda d: syn.hard_decel(d, 40.3, 3.8, 2.0, lead_m=None)),
    "weaving": (lambda d: syn.weave(d, 40, 0.16, 3.0, 6.0),
                lambda d: syn.weave(d, 40, 0.25, 6.0, 6.0)),  # one S-curve: a lane change, however brisk
    "stop_not_go": (lambda d: syn.stop(d, 10, 200),
                    lambda d: syn.stop(d, 10, 170)),
    "near_miss": (lambda d: syn.close_object(d, 50, rel_x_m=9.0, closing_mps=6.0),
                  lambda d: syn.close_object(d, 50, seconds=5, rel_x_m=15.0, closing_mps=6.0)),
    "contact": (lambda d: syn.event(d, 50.2, pb.EVENT_KIND_CONTACT, value=0.5),
                lambda d: syn.event(d, 50.2, pb.EVENT_KIND_DMS, text="driver looked away")),
    "takeover": (lambda d: syn.event(d, 50.2, pb.EVENT_KIND_TAKEOVER, from_mode=1, to_mode=3),
                 lambda d: syn.event(d, 50.2, pb.EVENT_KIND_MODE_CHANGE, from_mode=1, to_mode=3)),
    "call_for_help": (lambda d: syn.event(d, 50.2, pb.EVENT_KIND_CALL_FOR_HELP),
                      lambda d: syn.event(d, 50.2, pb.EVENT_KIND_MODE_CHANGE, from_mode=1, to_mode=2)),
    "error_code": (errors([20, 30, 49.5]), errors([20, 45, 70])),  # 3 in 29.5 s vs 3 spread over 50 s
    "operator_speech": (lambda d: syn.event(d, 50.2, pb.EVENT_KIND_OPERATOR_SPEECH, text="Wrong way!"),
                        lambda d: syn.event(d, 50.2, pb.EVENT_KIND_OPERATOR_SPEECH, text="nice and smooth")),
    "planner_uncertainty": (costs(0.04, range(50, 52)), costs(0.15, range(50, 60))),
    "scene_complexity": (scene(turn=True, oncoming_mps=8.0), scene(turn=True, oncoming_mps=0.5)),
}


def test_every_builtin_has_a_case_and_a_config_entry() -> None:
    assert set(CASES) == set(REGISTRY) == set(CFG.triggers)


@pytest.mark.parametrize("trigger", sorted(CASES))
def test_trigger_fires_once_on_its_episode(trigger: str) -> None:
    assert run(CASES[trigger][0]) == [trigger]


@pytest.mark.parametrize("trigger", sorted(CASES))
def test_trigger_stays_silent_near_threshold(trigger: str) -> None:
    assert run(CASES[trigger][1]) == []


@pytest.mark.parametrize("inject", [
    errors([20, 25, 30], codes=["E1", "E2", "E3"]),                    # three different codes
    errors([20]),                                                      # an isolated code
    scene(turn=True),                                                  # unprotected turn, nobody oncoming
    scene(emerged_at_m=20.0),                                          # emerged, but beyond 15 m
    scene(unknown_conf=0.6),                                           # rare object, confident
    maneuvers([(40, "lane_change_left"), (45, "cruise")]),             # one manoeuvre and back
    lambda d: syn.stop(d, 10, 400, task_state=pb.TASK_STATE_PAUSED),   # a delivery stop
    lambda d: syn.weave(d, 40, 0.09, 2.0, 10.0),                       # oscillation below amplitude
    lambda d: syn.weave(d, 40, 0.2, 2.0, 10.0) or d.speed_mps.__setitem__(slice(0, None), 3.0),  # at walking pace
])
def test_more_normal_driving_stays_silent(inject: Inject) -> None:
    assert run(inject) == []


def test_more_episodes_fire() -> None:
    assert run(scene(emerged_at_m=10.0)) == ["scene_complexity"]
    assert run(scene(unknown_conf=0.3)) == ["scene_complexity"]
    flip = maneuvers([(40, "yield"), (41, "cruise"), (42, "yield"), (43, "cruise")])
    assert run(flip) == ["planner_uncertainty"]
    burst = errors([20, 22, 24, 26, 28, 30, 32, 90, 92, 94])  # a burst, then another after 58 s of quiet
    assert run(burst) == ["error_code", "error_code"]


def test_hard_brake_and_phantom_stop_are_exclusive_and_extreme_close_is_mpd() -> None:
    d = syn.cruise("veh-1", 200, seed=2)
    syn.hard_decel(d, 40.3, 6.5, 1.2, lead_m=8.0)
    syn.hard_decel(d, 100.3, 6.5, 1.2, lead_m=30.0)
    syn.hard_decel(d, 160.3, 6.5, 1.2, lead_m=None)
    events = detect_recording(d.envelopes(), CFG)
    assert [(e.trigger, e.category) for e in events] == [
        ("hard_brake", Category.MPD), ("hard_brake", Category.MPS), ("phantom_stop", Category.MPS)]
    first = events[0]
    assert first.measurements["peak_decel_mps2"] == pytest.approx(6.5)
    assert first.measurements["min_lead_distance_m"] == pytest.approx(8.0)
    assert first.onset_ms <= first.peak_ms <= first.end_ms
    assert (first.window_pre_s, first.window_post_s) == (10.0, 5.0)


def one_scene_in_both_readings(d: syn.SyntheticDrive, ego_length_m: float | None) -> tuple[list, list]:
    """`d`'s envelopes sent with bumper gaps (BUMPER_GAP) and with box centres (BOX_CENTRE: each gap plus
    half the object's and the ego's lengths), every object a 4.6 m car box; `ego_length_m` sent in both,
    or (None) left to triggers.yaml's default."""
    gaps, centres = d.envelopes(), d.envelopes()
    ego_l = CFG.criticality.ego_length_m if ego_length_m is None else ego_length_m
    for g, c in zip(gaps, centres, strict=True):
        if g.WhichOneof("payload") != "perception":
            continue
        g.perception.position_reference = pb.POSITION_REFERENCE_BUMPER_GAP
        c.perception.position_reference = pb.POSITION_REFERENCE_BOX_CENTRE
        for env in (g, c):
            if ego_length_m is not None:
                env.perception.ego_length_m = ego_length_m
            for o in env.perception.objects:
                o.length_m, o.width_m = 4.6, 1.9
        for o in c.perception.objects:
            o.rel_x_m += 0.5 * (o.length_m + ego_l)
    return gaps, centres


@pytest.mark.parametrize("ego_length_m", [None, 9.0])
def test_hard_brake_and_phantom_stop_read_one_scene_the_same_in_either_position_reference(
        ego_length_m: float | None) -> None:
    # A lead 36 m ahead by bumper gap is in the 40 m path; its centre (40.6 / 42.8 m) is not: read as a gap,
    # a box centre would make the first brake a phantom stop.
    d = syn.cruise("veh-1", 200, seed=2)
    syn.hard_decel(d, 40.3, 6.5, 1.2, lead_m=36.0)
    syn.hard_decel(d, 100.3, 6.5, 1.2, lead_m=8.0)
    syn.hard_decel(d, 160.3, 6.5, 1.2, lead_m=None)
    gaps, centres = one_scene_in_both_readings(d, ego_length_m)
    by_gap = [e for e in detect_recording(gaps, CFG) if e.trigger in ("hard_brake", "phantom_stop")]
    by_centre = [e for e in detect_recording(centres, CFG) if e.trigger in ("hard_brake", "phantom_stop")]
    assert [(e.trigger, e.category) for e in by_gap] == [
        ("hard_brake", Category.MPS), ("hard_brake", Category.MPD), ("phantom_stop", Category.MPS)]
    assert by_gap[0].measurements["min_lead_distance_m"] == pytest.approx(36.0)
    assert by_gap[1].measurements["min_lead_distance_m"] == pytest.approx(8.0)
    assert [(e.trigger, e.category, e.onset_ms, e.peak_ms, e.end_ms) for e in by_centre] == \
        [(e.trigger, e.category, e.onset_ms, e.peak_ms, e.end_ms) for e in by_gap]
    for a, b in zip(by_gap, by_centre, strict=True):
        assert a.measurements.keys() == b.measurements.keys()
        for key, value in a.measurements.items():
            assert b.measurements[key] == pytest.approx(value, abs=1e-5), key  # float32 on the wire


def test_hard_brake_without_perception_is_hard_brake() -> None:
    d = syn.cruise("veh-1", 100, seed=2)
    syn.hard_decel(d, 40.3, 5.0, 1.0, lead_m=None)
    envelopes = [e for e in d.envelopes() if e.WhichOneof("payload") != "perception"]
    assert [e.trigger for e in detect_recording(envelopes, CFG)] == ["hard_brake"]


def test_near_miss_answered_by_a_hard_brake_is_one_hard_brake() -> None:
    def inject(d: syn.SyntheticDrive) -> None:
        syn.hard_decel(d, 50.2, 5.5, 1.5, lead_m=6.0)
        syn.close_object(d, 50, seconds=2, rel_x_m=6.0, closing_mps=5.0, object_class=pb.OBJECT_CLASS_CAR)
    assert run(inject) == ["hard_brake"]


def test_config_disables_a_trigger_and_moves_a_threshold() -> None:
    def inject(d: syn.SyntheticDrive) -> None:
        syn.weave(d, 20, 0.2, 2.0, 8.0)
        syn.hard_decel(d, 60.3, 5.0, 1.0, lead_m=12.0)
    no_weaving = load_config(overrides={"triggers": {"weaving": {"enabled": False}}})
    assert run(inject) == ["weaving", "hard_brake"]
    assert run(inject, config=no_weaving) == ["hard_brake"]
    stricter = load_config(overrides={"hard_decel": {"decel_mps2": 5.5}})
    assert run(inject, config=stricter) == ["weaving"]
    assert len({CFG.version, no_weaving.version, stricter.version}) == 3


def test_bad_config_is_refused() -> None:
    # The shared sections are typed now, so the unregistered trigger rides on the packaged ones.
    raw = CFG.model_dump()
    with pytest.raises(ValueError, match="no trigger class"):
        TriggerRunner(TriggerConfig.from_mapping(merge(raw, {"triggers": {"warp_drive": {}}})), "v")
    with pytest.raises(ValueError, match="unknown"):
        TriggerRunner(load_config(overrides={"triggers": {"weaving": {"params": {"yaw_rate": 0.1}}}}), "v")
    with pytest.raises(ValueError, match="runner: required key is missing"):
        TriggerConfig.from_mapping({"version": "x"})


def test_bad_threshold_names_file_and_key_path() -> None:
    def refused(overrides: dict, message: str) -> None:
        with pytest.raises(ConfigError, match=r"triggers\.yaml: " + message):
            TriggerRunner(load_config(overrides=overrides), "v")

    refused({"triggers": {"weaving": {"params": {"yaw_rate_rps": -0.1}}}},
            r"triggers\.weaving\.params\.yaw_rate_rps: .*greater than 0")
    refused({"triggers": {"weaving": {"params": {"min_sign_changes": None}}}},
            r"triggers\.weaving\.params\.min_sign_changes: .*valid integer")
    refused({"hard_decel": {"severe_decel_mps2": 3.0}}, r"hard_decel: .*severe_decel_mps2 must exceed decel_mps2")
    refused({"triggers": {"contact": {"window_pre_s": -1}}}, r"triggers\.contact\.window_pre_s: .*greater than")
    refused({"sanity": {"max_speed_mps": float("nan")}}, r"sanity\.max_speed_mps: .*finite")


def test_event_carries_ids_config_version_and_measurements() -> None:
    d = syn.cruise("veh-7", 100, seed=4)
    syn.event(d, 50.2, pb.EVENT_KIND_CONTACT, value=2.0, source="bumper")
    (event,) = detect_recording(d.envelopes(), CFG)
    assert event.vehicle_id == "veh-7" and event.category == Category.MPD
    assert event.onset_ms == d.start_ms + 50_200 and event.config_version == CFG.version
    assert event.measurements["impact_mps"] == 2.0 and 0.0 <= event.severity <= 1.0
    assert len(event.trigger_id) == 24


def test_plausibility_bounds_are_the_codecs_limits_written_once(tmp_path) -> None:
    motion = LIMITS.motion
    assert (CFG.sanity.max_speed_mps, CFG.sanity.max_abs_accel_mps2, CFG.sanity.max_step_speed_mps) == (
        motion.max_speed_mps, motion.max_accel_mps2, motion.max_step_speed_mps)
    stricter = LIMITS.model_copy(update={"motion": motion.model_copy(update={"max_accel_mps2": 12.0})})
    assert load_config(limits=stricter).sanity.max_abs_accel_mps2 == 12.0
    restated = tmp_path / "triggers.yaml"
    restated.write_text(DEFAULT_PATH.read_text().replace("sanity:\n", "sanity:\n  max_speed_mps: 60.0\n"))
    with pytest.raises(ConfigError, match=r"sanity\.max_speed_mps: stated in limits\.yaml"):
        load_config(restated)
