"""The vehicle's replay queue without servers: activation, pause and resume to the unpaused answer, work
order, the nightly budget, the queue's bound, the hybrid rule and a restart from the persisted directory.
The windows are real: a simulated hard brake recorded by the vehicle's ring buffer."""

from __future__ import annotations

import itertools
import math

import pytest
import yaml
from fleetloop import topics
from fleetloop.replay.maps import SimWorldMap
from fleetloop.replay.minilog import from_minilog
from fleetloop.replay.pair import pair_from_bytes, pair_to_bytes
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig
from fleetloop.v1 import common_pb2, triggers_pb2
from fleetloop.vehicle import RingBuffer
from fleetloop.vehicle.params import load_vehicle_params, site_at
from fleetloop.vehicle.replay_queue import (
    PAIR,
    RAW,
    QueuedWindow,
    ReplayQueue,
    activation_blockers,
    hybrid_product,
    night_index,
    planner_uncertainty,
    vehicle_replayer,
)

from tests.support import REPO_ROOT

VEHICLE = "veh-0001"
BASE = load_vehicle_params()
SMALL_SEARCH = {"iterations": 3, "candidates_per_iteration": 32, "max_rows": 1024}
PARAMS = BASE.model_copy(update={"replay_queue": BASE.replay_queue.model_copy(
    update={"search": SMALL_SEARCH, "slice_iterations": 1})})
SITE = BASE.charging_sites[0]
HOUR_MS = 3_600_000


def ready(**fields) -> common_pb2.Heartbeat:
    """A heartbeat meeting every activation condition, with `fields` replaced."""
    hb = common_pb2.Heartbeat(gear=common_pb2.GEAR_PARK, charging=True, lat_deg=SITE.lat_deg, lon_deg=SITE.lon_deg,
                              state_of_charge=0.9, compute_temp_c=45.0, parked=True,
                              connectivity=common_pb2.CONNECTIVITY_WIFI)
    for k, v in fields.items():
        setattr(hb, k, v)
    return hb


@pytest.fixture(scope="module")
def fleet():
    """A simulated hard brake on veh-0001 in its ring buffer, the simulator's map and the brake's time."""
    sim = FleetSimulator(SimConfig(vehicles=2, duration_s=150, seed=3,
                                   incidents=[ScheduledIncident("hard_brake", 0, 60)]))
    buffer = RingBuffer(BASE.ring_capacity_s)
    for second in sim.seconds():
        for topic, env in second.messages:
            if env.vehicle_id == VEHICLE:
                buffer.append(topic, env)
    (incident,) = [i for i in sim.ground_truth.incidents if i.vehicle_id == VEHICLE]
    return buffer, SimWorldMap.from_simulator(sim), incident.start_ms


@pytest.fixture(scope="module")
def replayer():
    return vehicle_replayer(PARAMS, device="cpu")


def trigger(onset_ms: int, name: str = "hard_brake", severity: float = 0.7, tid: str = "") -> triggers_pb2.TriggerEvent:
    return triggers_pb2.TriggerEvent(trigger_id=tid or f"{name}-{onset_ms}-{severity}", vehicle_id=VEHICLE,
                                     trigger=name, severity=severity, onset_ms=onset_ms, peak_ms=onset_ms,
                                     end_ms=onset_ms, window_pre_s=10.0, window_post_s=5.0)


def queue(tmp_path, fleet, replayer, params=PARAMS, clock=None) -> ReplayQueue:
    kwargs = {"compute_clock": clock} if clock is not None else {}
    return ReplayQueue(tmp_path / "rq", VEHICLE, params, replayer, fleet[1], utc_offset_h=8, **kwargs)


def night_ms(night: int, hour_local: float = 22.0) -> int:
    """Epoch ms of `hour_local` (UTC+8) in the vehicle's night number `night` (nights start at 20:00 local)."""
    start = night * 86_400_000 - 8 * HOUR_MS + 20 * HOUR_MS
    return start + round((hour_local - 20.0) % 24 * HOUR_MS)


NOW = night_ms(20_600)


# --- pure rules ---


def test_each_activation_condition_alone_blocks():
    act, sites = BASE.replay_queue.activation, BASE.charging_sites
    assert activation_blockers(ready(), sites, act) == []
    far = site_at(sites, SITE.lat_deg + 0.01, SITE.lon_deg)  # ~1.1 km north
    assert far is None and site_at(sites, SITE.lat_deg + 0.001, SITE.lon_deg) == SITE  # ~110 m: inside 150 m
    cases = {
        "gear": (ready(gear=common_pb2.GEAR_DRIVE), "gear GEAR_DRIVE, not GEAR_PARK"),
        "gear unset": (ready(gear=common_pb2.GEAR_UNSPECIFIED), "gear GEAR_UNSPECIFIED, not GEAR_PARK"),
        "charging": (ready(charging=False), "not charging"),
        "site": (ready(lat_deg=SITE.lat_deg + 0.01), "not at a known charging site (nearest suzhou-hub at 1112 m)"),
        "soc": (ready(state_of_charge=0.8), "state of charge 0.80 <= 0.80"),
        "temp": (ready(compute_temp_c=60.0), "compute 60.0 C >= 60.0 C"),
    }
    for name, (hb, reason) in cases.items():
        assert activation_blockers(hb, sites, act) == [reason], name


def test_hybrid_rule_pairs_for_planning_raw_for_perception_and_mirrors_the_tier_policy():
    rq = BASE.replay_queue
    assert hybrid_product(["hard_brake"], rq) == PAIR
    assert hybrid_product(["planner_uncertainty", "near_miss"], rq) == PAIR
    assert hybrid_product(["phantom_stop"], rq) == RAW
    assert hybrid_product(["hard_brake", "phantom_stop"], rq) == RAW  # a doubtful object list is not replayed
    assert hybrid_product(["near_miss", "takeover"], rq) is None
    policy = yaml.safe_load((REPO_ROOT / "services/case_assembler/policy.yaml").read_text())
    replayed = {t for r in policy["rules"] if r.get("replay") for t in r["when"].get("triggers", [])}
    assert set(rq.planning_triggers) == replayed
    raw = {t for r in policy["rules"] if r["tier"] == "raw" for t in r["when"].get("triggers", [])}
    assert set(rq.perception_triggers) <= raw


def test_planner_uncertainty_reads_the_smallest_top_two_cost_gap():
    def summary(costs):
        env = common_pb2.Envelope(vehicle_id=VEHICLE)
        env.perception.planner_top_costs.extend(costs)
        return (0, topics.PERCEPTION, env)

    assert planner_uncertainty([], 0.2) == 0.0
    assert planner_uncertainty([summary([1.0, 1.5])], 0.2) == 0.0            # 50 % gap: a clear decision
    assert planner_uncertainty([summary([1.0, 1.5]), summary([2.0, 2.2])], 0.2) == pytest.approx(0.5)  # 10 %
    assert planner_uncertainty([summary([1.0, 1.0, 3.0])], 0.2) == 1.0        # a tie
    assert planner_uncertainty([summary([1.0])], 0.2) == 0.0


def test_nights_start_at_the_local_night_start():
    n = 20_600
    assert night_index(night_ms(n, 20.0), 8, 20.0) == n
    assert night_index(night_ms(n, 20.0) - 1, 8, 20.0) == n - 1
    assert night_index(night_ms(n, 5.0), 8, 20.0) == n  # 05:00 the next morning is still that night
    assert night_index(night_ms(n, 19.99), 8, 20.0) == n


def test_work_order_is_severity_then_uncertainty_then_arrival():
    def w(i, sev, unc):
        return QueuedWindow(f"i{i}", VEHICLE, "c", f"t{i}", "hard_brake", sev, unc, i, 0, 1, 0, 1)

    items = [w(0, 0.5, 0.9), w(1, 0.9, 0.0), w(2, 0.5, 0.9), w(3, 0.5, 1.0), w(4, 0.1, 1.0)]
    assert [i.item_id for i in sorted(items, key=lambda i: i.order)] == ["i1", "i3", "i0", "i2", "i4"]


# --- the queue over real windows ---


def unpaused_pair(fleet, replayer, item_created_ms: int, mcap: bytes) -> bytes:
    scen = from_minilog(mcap, fleet[1], replayer.config, device=replayer.device)
    solved = replayer.solve(scen, seed=PARAMS.replay_queue.seed, robust=False)
    return pair_to_bytes(replayer.pair(scen, solved, 0, created_ms=item_created_ms), replayer.config)


def test_a_lapse_pauses_and_the_resumed_search_gives_the_unpaused_answer(tmp_path, fleet, replayer):
    buffer, _, brake_ms = fleet
    q = queue(tmp_path, fleet, replayer)
    offer = q.offer(trigger(brake_ms), buffer, case_id="case-hb")
    assert offer.outcome == "queued"
    item = q.items[offer.item_id]
    mcap = (q.items_dir / f"{item.item_id}.mcap").read_bytes()
    assert (item.case_id, item.window_end_ms - item.window_start_ms) == ("case-hb", 15_000)
    step = q.step(ready(), NOW)
    assert (step.state, step.iterations_done) == ("searched", 1)
    for lapse in (ready(charging=False), ready(gear=common_pb2.GEAR_NEUTRAL), ready(compute_temp_c=70.0)):
        assert q.step(lapse, NOW).state == "blocked"
    assert q.items[item.item_id].iterations_done == 1  # paused where it stopped
    q = queue(tmp_path, fleet, replayer)  # and a reboot in the pause
    assert q.items[item.item_id].iterations_done == 1
    states = [q.step(ready(), NOW).state for _ in range(3)]
    assert states == ["searched", "solved", "idle"]
    (product,) = q.uploads(common_pb2.CONNECTIVITY_WIFI)
    data = open(product.path, "rb").read()
    assert data == unpaused_pair(fleet, replayer, item.queued_ms, mcap)
    pair = pair_from_bytes(data)
    assert pair.provenance.seed == PARAMS.replay_queue.seed
    assert (product.case_id, product.kind, product.size_bytes) == ("case-hb", PAIR, len(data))
    assert not list(q.items_dir.iterdir())  # the minilog and the progress are gone once the pair exists


def test_the_queue_works_the_most_severe_window_first(tmp_path, fleet, replayer):
    buffer, _, brake_ms = fleet
    params = PARAMS.model_copy(update={"replay_queue": PARAMS.replay_queue.model_copy(update={"slice_iterations": 9})})
    q = queue(tmp_path, fleet, replayer, params)
    offers = [q.offer(trigger(brake_ms + dt, severity=sev), buffer) for dt, sev in ((0, 0.4), (-20_000, 0.9),
                                                                                   (-40_000, 0.6))]
    assert [o.outcome for o in offers] == ["queued"] * 3
    solved = [q.step(ready(), NOW).item_id for _ in range(3)]
    assert solved == [offers[1].item_id, offers[2].item_id, offers[0].item_id]


def test_the_budget_stops_work_and_resets_the_next_night(tmp_path, fleet, replayer):
    buffer, _, brake_ms = fleet
    ticks = itertools.count(0.0, 5.0)  # every reading of the compute clock is 5 s later
    params = PARAMS.model_copy(update={"replay_queue": PARAMS.replay_queue.model_copy(
        update={"nightly_budget_s": 12.0})})
    q = queue(tmp_path, fleet, replayer, params, clock=lambda: next(ticks))
    q.offer(trigger(brake_ms), buffer)
    first = q.step(ready(), NOW)
    assert first.state == "searched" and q.spent_s >= 5.0
    while q.spent_s < 12.0:
        assert q.step(ready(), NOW).state == "searched"
    spent = q.step(ready(), NOW + HOUR_MS)  # 23:00, the same night
    assert spent.state == "budget_spent" and "of 12 s spent tonight" in spent.reasons[0]
    q = queue(tmp_path, fleet, replayer, params, clock=lambda: next(ticks))  # a reboot does not refill it
    assert q.step(ready(), night_ms(20_600, 4.0)).state == "budget_spent"
    nxt = q.step(ready(), night_ms(20_601, 20.5))
    assert nxt.state in ("searched", "solved") and q.night == 20_601


def test_the_bound_drops_the_lowest_oldest_window_with_a_reason(tmp_path, fleet, replayer):
    buffer, _, brake_ms = fleet
    params = PARAMS.model_copy(update={"replay_queue": PARAMS.replay_queue.model_copy(update={"max_items": 2})})
    q = queue(tmp_path, fleet, replayer, params)
    a = q.offer(trigger(brake_ms, severity=0.5), buffer)
    b = q.offer(trigger(brake_ms - 20_000, severity=0.5), buffer)
    c = q.offer(trigger(brake_ms - 40_000, severity=0.3), buffer)  # the lowest itself: not kept
    assert (a.outcome, b.outcome, c.outcome) == ("queued", "queued", "refused")
    assert c.reason.startswith("queue_full: 3 windows") and "lowest priority (severity 0.30" in c.reason
    d = q.offer(trigger(brake_ms - 60_000, severity=0.9), buffer)
    assert d.outcome == "queued" and [x.item_id for x in d.dropped] == [a.item_id]  # equal severity: oldest
    assert set(q.items) == {b.item_id, d.item_id}
    assert q.offer(trigger(brake_ms, severity=0.5), buffer).outcome == "duplicate"  # dropped stays dropped
    size = q.items[b.item_id].size_bytes
    tight = PARAMS.model_copy(update={"replay_queue": PARAMS.replay_queue.model_copy(
        update={"max_bytes": size - 1})})
    small = ReplayQueue(tmp_path / "small", VEHICLE, tight, replayer, fleet[1], utc_offset_h=8)
    e = small.offer(trigger(brake_ms), buffer)
    assert e.outcome == "refused" and e.reason.startswith("queue_full: 1 windows / ")
    assert f"over the bound of 32 windows / {size - 1} B" in e.reason
    reopened = queue(tmp_path, fleet, replayer, params)
    assert [x.trigger_id for x in reopened.dropped] == [c.trigger_id, a.trigger_id]


def test_offers_outside_the_rule_or_the_buffer(tmp_path, fleet, replayer):
    buffer, _, brake_ms = fleet
    q = queue(tmp_path, fleet, replayer)
    raw = q.offer(trigger(brake_ms, "phantom_stop"), buffer)
    assert raw.outcome == "raw" and "suspected perception failure" in raw.reason and not q.items
    assert q.offer(trigger(brake_ms, "near_miss"), buffer).outcome == "ignored"
    assert q.offer(trigger(brake_ms), None).reason == "no data recorded for this vehicle"
    before = q.offer(trigger(buffer.items[0][0] - 60_000), buffer)
    assert (before.outcome, before.reason.split(" (")[0]) == ("refused", "nothing recorded in the window")
    short = RingBuffer(30.0)  # keeps 30 s: the brake's window has left it by the end of the run
    for _, topic, env in buffer.items:
        short.append(topic, env)
    evicted = q.offer(trigger(brake_ms), short)
    assert evicted.outcome == "refused" and evicted.reason.startswith("window left the ring buffer")
    assert not q.items
    assert q.uploads(common_pb2.CONNECTIVITY_CELLULAR) == []


def test_a_window_still_being_recorded_waits_and_survives_a_reboot(tmp_path, fleet, replayer):
    buffer, _, brake_ms = fleet
    partial = RingBuffer(BASE.ring_capacity_s)
    for t_ms, topic, env in buffer.items:
        if t_ms < brake_ms + 2_000:
            partial.append(topic, env)
    q = queue(tmp_path, fleet, replayer)
    waiting = q.offer(trigger(brake_ms), partial)
    assert (waiting.outcome, waiting.reason) == ("waiting", "window not fully recorded yet")
    assert q.record(partial) == []
    q = queue(tmp_path, fleet, replayer)
    assert q.offer(trigger(brake_ms), partial).outcome == "duplicate"
    (cut,) = q.record(buffer)
    assert cut.outcome == "queued" and q.items[cut.item_id].window_end_ms == brake_ms + 5_000
    assert not q.waiting and not queue(tmp_path, fleet, replayer).waiting


def test_an_unreplayable_window_is_dropped_with_its_reason(tmp_path, fleet, replayer):
    buffer, _, brake_ms = fleet
    q = queue(tmp_path, fleet, replayer)
    offer = q.offer(trigger(brake_ms), buffer)
    (q.items_dir / f"{offer.item_id}.mcap").write_bytes(b"not an mcap file")
    step = q.step(ready(), NOW)
    assert step.state == "failed" and not q.items
    assert q.dropped[-1].reason.startswith("unreplayable: ")


def test_uploads_go_over_wifi_and_are_forgotten_once_sent(tmp_path, fleet, replayer):
    buffer, _, brake_ms = fleet
    params = PARAMS.model_copy(update={"replay_queue": PARAMS.replay_queue.model_copy(update={"slice_iterations": 9})})
    q = queue(tmp_path, fleet, replayer, params)
    offer = q.offer(trigger(brake_ms), buffer)
    window = (q.items_dir / f"{offer.item_id}.json").read_bytes()
    assert q.step(ready(), NOW).state == "solved"
    assert q.uploads(common_pb2.CONNECTIVITY_CELLULAR) == []
    (q.items_dir / f"{offer.item_id}.json").write_bytes(window)  # as if stopped before the clean-up
    assert not queue(tmp_path, fleet, replayer, params).items and not list(q.items_dir.iterdir())
    (product,) = queue(tmp_path, fleet, replayer, params).uploads(common_pb2.CONNECTIVITY_WIFI)
    assert product.size_bytes < product.minilog_bytes and math.isfinite(product.search_seconds)
    q.mark_uploaded(product.item_id)
    assert q.uploads(common_pb2.CONNECTIVITY_WIFI) == [] and not list(q.outbox_dir.iterdir())
