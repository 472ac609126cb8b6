"""The vehicle's replay queue: the offline shadow mode's vehicle end (issue 12 §4, seed article 001).

At a replay-worthy trigger the vehicle snapshots the case window from its ring buffer (the minilog cut
the uploader makes) into a bounded local queue kept as files under one directory, so a reboot resumes.
Parked and charging at a known site, it searches each window for a better ego trajectory with a
vehicle-sized budget through the one replay path (`fleetloop.replay.replayer.Replayer`), a slice of
iterations at a time, and keeps the product, the ScenarioSolutionPair, for the Wi-Fi upload in place of
the minilog. The hybrid rule: planning problems become pairs; a suspected perception failure is not
replayed (the object list it would replay is what is in doubt): it asks for raw data instead.

    queue = ReplayQueue(directory, "veh-0001", params, replayer, world_map, utc_offset_h=8)
    queue.offer(trigger, ring_buffer)             # at a trigger (again via `record` once the window is in)
    step = queue.step(heartbeat, now_ms)          # each heartbeat: one slice of work, or why not
    for product in queue.uploads(heartbeat.connectivity): ...; queue.mark_uploaded(product.item_id)

Work starts only when every activation condition holds (`activation_blockers`: gear P, charging at a
known site, state of charge above and compute temperature below their thresholds) and the night's
compute budget is not spent (reset at the vehicle's local night start). Windows are searched by
severity, then planner uncertainty, then arrival. The search's progress is saved after every slice;
a lapse pauses it there and the next activation continues it, with the same answer an unpaused search
gives for the same seed.

Files under the directory: `items/<id>.json` (the window), `items/<id>.mcap` (its minilog),
`items/<id>.search.pt` (search progress), `outbox/<id>.json` + `outbox/<id>.pair` (the products),
`budget.json` (the night and its seconds spent), `waiting.json` (triggers whose window is not yet
recorded), `dropped.jsonl` (every window dropped, with its reason).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fleetloop import topics
from fleetloop.replay.maps import MapProvider
from fleetloop.replay.minilog import from_minilog
from fleetloop.replay.pair import pair_to_bytes
from fleetloop.replay.replayer import Replayer, Solved
from fleetloop.replay.search import SlicedSearch
from fleetloop.v1 import common_pb2, triggers_pb2, uploads_pb2
from fleetloop.vehicle.params import ActivationParams, ChargingSite, ReplayQueueParams, VehicleParams, site_at
from fleetloop.vehicle.ring import RingBuffer
from fleetloop.vehicle.uploader import cut_tier

log = logging.getLogger(__name__)

PAIR, RAW = "pair", "raw"
DAY_MS = 86_400_000


# --- pure rules ------------------------------------------------------------------------------------------------


def hybrid_product(trigger_names: Iterable[str], params: ReplayQueueParams) -> str | None:
    """What the vehicle sends for a window with these triggers: RAW when any is a suspected perception
    failure (replaying a doubtful object list proves nothing; the sensor frames do), else PAIR when any
    is a planning problem, else None (the cloud's ordinary tiers, no replay)."""
    names = set(trigger_names)
    if names & set(params.perception_triggers):
        return RAW
    if names & set(params.planning_triggers):
        return PAIR
    return None


def activation_blockers(heartbeat: common_pb2.Heartbeat, sites: Sequence[ChargingSite],
                        activation: ActivationParams) -> list[str]:
    """Why the queue may not work now (empty: every condition holds): gear in P, charging, at a known
    charging site, state of charge (0..1) above and compute temperature (C) below the thresholds."""
    out = []
    if heartbeat.gear != common_pb2.GEAR_PARK:
        out.append(f"gear {common_pb2.Gear.Name(heartbeat.gear)}, not GEAR_PARK")
    if not heartbeat.charging:
        out.append("not charging")
    if site_at(sites, heartbeat.lat_deg, heartbeat.lon_deg) is None:
        nearest = min((s.distance_m(heartbeat.lat_deg, heartbeat.lon_deg), s.site_id) for s in sites) if sites \
            else None
        where = f" (nearest {nearest[1]} at {nearest[0]:.0f} m)" if nearest else " (no sites configured)"
        out.append(f"not at a known charging site{where}")
    if not heartbeat.state_of_charge > activation.min_state_of_charge:
        out.append(f"state of charge {heartbeat.state_of_charge:.2f} <= {activation.min_state_of_charge:.2f}")
    if not heartbeat.compute_temp_c < activation.max_compute_temp_c:
        out.append(f"compute {heartbeat.compute_temp_c:.1f} C >= {activation.max_compute_temp_c:.1f} C")
    return out


def planner_uncertainty(items: Iterable[tuple[int, str, common_pb2.Envelope]], gap: float) -> float:
    """0..1: 1 - (the smallest relative gap between the planner's two best candidate costs in the window's
    perception summaries) / `gap`, clipped; 0 without any summary carrying two costs. A tie is 1."""
    smallest = math.inf
    for _, topic, env in items:
        if topic != topics.PERCEPTION or len(env.perception.planner_top_costs) < 2:
            continue
        best, second = sorted(env.perception.planner_top_costs)[:2]
        if best > 0:
            smallest = min(smallest, (second - best) / best)
    return 0.0 if math.isinf(smallest) else min(1.0, max(0.0, 1.0 - smallest / gap))


def night_index(now_ms: int, utc_offset_h: float, night_start_local_h: float) -> int:
    """The vehicle's local night containing `now_ms` (epoch ms), numbered by days: it changes at
    `night_start_local_h` local time, when the nightly budget resets."""
    local_ms = now_ms + round(utc_offset_h * 3_600_000) - round(night_start_local_h * 3_600_000)
    return local_ms // DAY_MS


# --- records ---------------------------------------------------------------------------------------------------


@dataclass
class QueuedWindow:
    """One snapshotted window waiting for the search: its trigger, priority (severity 0..1, uncertainty
    0..1, arrival `seq`), window (epoch ms), when it was queued (the vehicle's clock, epoch ms), the
    minilog's size (bytes) and the refinement iterations run so far."""

    item_id: str
    vehicle_id: str
    case_id: str
    trigger_id: str
    trigger: str
    severity: float
    uncertainty: float
    seq: int
    window_start_ms: int
    window_end_ms: int
    queued_ms: int
    size_bytes: int
    iterations_done: int = 0

    @property
    def order(self) -> tuple[float, float, int]:
        """Work order (ascending): severity first, then uncertainty, then arrival."""
        return (-self.severity, -self.uncertainty, self.seq)


@dataclass
class Product:
    """A finished window: the ScenarioSolutionPair at `path` to upload in place of the minilog."""

    item_id: str
    vehicle_id: str
    case_id: str
    trigger_id: str
    kind: str
    path: str
    size_bytes: int
    minilog_bytes: int
    search_seconds: float
    source: str


@dataclass
class Dropped:
    item_id: str
    trigger_id: str
    reason: str


@dataclass
class Offer:
    """What `offer` did: outcome `queued` | `waiting` (window not fully recorded) | `raw` (hybrid rule:
    ask for raw) | `ignored` (no replay rule) | `duplicate` | `refused` (the window cannot be cut), with
    the reason, and the windows the queue's bound dropped."""

    outcome: str
    trigger_id: str
    item_id: str = ""
    reason: str = ""
    dropped: tuple[Dropped, ...] = ()


@dataclass
class Step:
    """One call of `step`: state `blocked` (reasons: the conditions that do not hold) | `budget_spent` |
    `idle` (nothing queued) | `searched` (a slice ran, more to do) | `solved` (a product is in the outbox)
    | `failed` (the window could not be replayed: dropped, reason given); `seconds` of compute charged."""

    state: str
    reasons: tuple[str, ...] = ()
    item_id: str = ""
    seconds: float = 0.0
    iterations_done: int = 0


# --- the queue -------------------------------------------------------------------------------------------------


def vehicle_replayer(params: VehicleParams, device: str | None = None, checkpoints: Path | None = None) -> Replayer:
    """The vehicle's replay set-up: replay.yaml with vehicle.yaml's `replay_queue.search` override and
    policy (`device` None: replay.yaml's, `auto` = CUDA when present)."""
    rq = params.replay_queue
    return Replayer.build(policy=rq.policy, checkpoints=checkpoints, search=rq.search, device=device)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write-then-rename, so a reboot mid-write leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


class ReplayQueue:
    """One vehicle's replay queue over `directory` (created; an existing one is resumed as it was left).

    `replayer` is the vehicle's set-up (`vehicle_replayer`), `map_provider` its map for rebuilding the
    scene, `utc_offset_h` its time zone (local nights), `compute_clock` the monotonic seconds the budget
    is charged by (passed in; `time.perf_counter` by default).
    """

    def __init__(self, directory: Path, vehicle_id: str, params: VehicleParams, replayer: Replayer,
                 map_provider: MapProvider, utc_offset_h: float,
                 compute_clock: Callable[[], float] = time.perf_counter) -> None:
        self.dir = Path(directory)
        self.items_dir, self.outbox_dir = self.dir / "items", self.dir / "outbox"
        self.items_dir.mkdir(parents=True, exist_ok=True)
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        self.vehicle_id, self.vehicle_params, self.params = vehicle_id, params, params.replay_queue
        self.replayer, self.map_provider, self.utc_offset_h = replayer, map_provider, utc_offset_h
        self.clock = compute_clock
        self._active: tuple[str, Any, SlicedSearch] | None = None  # (item id, scenario, search) in memory
        self.items: dict[str, QueuedWindow] = {}
        for path in sorted(self.items_dir.glob("*.json")):
            item = QueuedWindow(**json.loads(path.read_bytes()))
            self.items[item.item_id] = item
        self.products: dict[str, Product] = {}
        for path in sorted(self.outbox_dir.glob("*.json")):
            product = Product(**json.loads(path.read_bytes()))
            self.products[product.item_id] = product
        for item_id in set(self.items) & set(self.products):  # stopped between the pair's write and the clean-up
            self._forget_item(item_id)
        self.dropped: list[Dropped] = []
        dropped_path = self.dir / "dropped.jsonl"
        if dropped_path.exists():
            self.dropped = [Dropped(**json.loads(line)) for line in dropped_path.read_text().splitlines() if line]
        waiting_path = self.dir / "waiting.json"
        self.waiting: dict[str, tuple[triggers_pb2.TriggerEvent, str]] = {}  # trigger id -> (trigger, case id)
        if waiting_path.exists():
            for trigger_id, entry in json.loads(waiting_path.read_bytes()).items():
                trigger = triggers_pb2.TriggerEvent.FromString(base64.b64decode(entry["trigger"]))
                self.waiting[trigger_id] = (trigger, entry["case_id"])
        budget_path = self.dir / "budget.json"
        budget = json.loads(budget_path.read_bytes()) if budget_path.exists() else {"night": None, "spent_s": 0.0}
        self.night, self.spent_s = budget["night"], float(budget["spent_s"])
        self._seq = max((i.seq for i in self.items.values()), default=-1) + 1

    # --- in: triggers and windows ---

    def item_id(self, trigger_id: str) -> str:
        """Deterministic: the same trigger is the same queue entry across reboots and re-offers."""
        return hashlib.sha1(f"{self.vehicle_id}|{trigger_id}".encode()).hexdigest()[:16]

    def _known(self, trigger_id: str) -> bool:
        item_id = self.item_id(trigger_id)
        return (item_id in self.items or item_id in self.products or trigger_id in self.waiting
                or any(d.trigger_id == trigger_id for d in self.dropped))

    def offer(self, trigger: triggers_pb2.TriggerEvent, buffer: RingBuffer | None,
              case_id: str = "") -> Offer:
        """Queue the window of `trigger` (onset - window_pre_s .. end + window_post_s) when the hybrid
        rule says PAIR; a window not fully recorded yet waits for `record`. `case_id` names the case in
        the minilog's metadata (default: the trigger id)."""
        trigger_id = trigger.trigger_id
        kind = hybrid_product([trigger.trigger], self.params)
        if kind is None:
            return Offer("ignored", trigger_id, reason=f"{trigger.trigger} is not a replay trigger")
        if kind == RAW:
            return Offer("raw", trigger_id, reason=f"{trigger.trigger}: suspected perception failure, raw data "
                                                   "settles it, not a replay of its object list")
        if self._known(trigger_id):
            return Offer("duplicate", trigger_id, item_id=self.item_id(trigger_id))
        request = self._request(trigger, case_id)
        if buffer is not None and buffer.newest_ms < request.window_end_ms and buffer.covers(request.window_start_ms):
            waiting = triggers_pb2.TriggerEvent()
            waiting.CopyFrom(trigger)
            self.waiting[trigger_id] = (waiting, case_id)
            self._save_waiting()
            return Offer("waiting", trigger_id, item_id=self.item_id(trigger_id),
                         reason="window not fully recorded yet")
        return self._snapshot(trigger, buffer, request)

    def record(self, buffer: RingBuffer) -> list[Offer]:
        """Cut the windows of waiting triggers that `buffer` now holds completely (call as it grows)."""
        out = []
        for trigger_id, (trigger, case_id) in list(self.waiting.items()):
            request = self._request(trigger, case_id)
            if buffer.newest_ms < request.window_end_ms and buffer.covers(request.window_start_ms):
                continue
            del self.waiting[trigger_id]
            out.append(self._snapshot(trigger, buffer, request))
        if out:
            self._save_waiting()
        return out

    def _request(self, trigger: triggers_pb2.TriggerEvent, case_id: str) -> uploads_pb2.UploadRequest:
        return uploads_pb2.UploadRequest(
            request_id=f"replay-{trigger.trigger_id}", case_id=case_id or trigger.trigger_id, tier="minilog",
            window_start_ms=trigger.onset_ms - round(trigger.window_pre_s * 1000),
            window_end_ms=trigger.end_ms + round(trigger.window_post_s * 1000))

    def _snapshot(self, trigger: triggers_pb2.TriggerEvent, buffer: RingBuffer | None,
                  request: uploads_pb2.UploadRequest) -> Offer:
        trigger_id = trigger.trigger_id
        if buffer is None or not buffer.items:
            return Offer("refused", trigger_id, reason="no data recorded for this vehicle")
        if not buffer.covers(request.window_start_ms):
            return Offer("refused", trigger_id,
                         reason=f"window left the ring buffer (kept back to {buffer.evicted_until_ms})")
        if request.window_end_ms <= request.window_start_ms:
            return Offer("refused", trigger_id, reason="empty window")
        window = buffer.window(request.window_start_ms, request.window_end_ms)
        if not window:
            return Offer("refused", trigger_id, reason=f"nothing recorded in the window (the buffer holds "
                                                       f"{buffer.items[0][0]}..{buffer.newest_ms})")
        minilog, _ = cut_tier(self.vehicle_id, buffer, request, self.vehicle_params)
        item = QueuedWindow(
            item_id=self.item_id(trigger_id), vehicle_id=self.vehicle_id, case_id=request.case_id,
            trigger_id=trigger_id, trigger=trigger.trigger, severity=float(trigger.severity),
            uncertainty=planner_uncertainty(window, self.params.uncertainty_gap), seq=self._seq,
            window_start_ms=request.window_start_ms, window_end_ms=request.window_end_ms,
            queued_ms=buffer.newest_ms, size_bytes=len(minilog.data))
        self._seq += 1
        _write_atomic(self.items_dir / f"{item.item_id}.mcap", minilog.data)
        self._save_item(item)
        self.items[item.item_id] = item
        dropped = self._enforce_bound()
        mine = [d for d in dropped if d.item_id == item.item_id]
        if mine:
            return Offer("refused", trigger_id, item_id=item.item_id, reason=mine[0].reason, dropped=tuple(dropped))
        return Offer("queued", trigger_id, item_id=item.item_id, dropped=tuple(dropped))

    def _enforce_bound(self) -> list[Dropped]:
        """Drop the lowest window (severity, then uncertainty), the oldest first, until both bounds hold."""
        dropped = []
        while True:
            count, size = len(self.items), sum(i.size_bytes for i in self.items.values())
            if count <= self.params.max_items and size <= self.params.max_bytes:
                return dropped
            lowest = min(self.items.values(), key=lambda i: (i.severity, i.uncertainty, i.seq))
            reason = (f"queue_full: {count} windows / {size} B over the bound of {self.params.max_items} windows / "
                      f"{self.params.max_bytes} B; lowest priority (severity {lowest.severity:.2f}, uncertainty "
                      f"{lowest.uncertainty:.2f}), oldest first")
            dropped.append(self._drop(lowest, reason))

    def _forget_item(self, item_id: str) -> None:
        """Remove a window's files (metadata last) and its in-memory search."""
        for suffix in (".mcap", ".search.pt", ".json"):
            (self.items_dir / f"{item_id}{suffix}").unlink(missing_ok=True)
        del self.items[item_id]
        if self._active is not None and self._active[0] == item_id:
            self._active = None

    def _drop(self, item: QueuedWindow, reason: str) -> Dropped:
        self._forget_item(item.item_id)
        record = Dropped(item.item_id, item.trigger_id, reason)
        self.dropped.append(record)
        with open(self.dir / "dropped.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(record), sort_keys=True) + "\n")
        log.info("replay queue %s dropped %s (%s): %s", self.vehicle_id, item.item_id, item.trigger, reason)
        return record

    # --- work ---

    def pending(self) -> list[QueuedWindow]:
        """The queued windows in work order."""
        return sorted(self.items.values(), key=lambda i: i.order)

    def step(self, heartbeat: common_pb2.Heartbeat, now_ms: int) -> Step:
        """One slice of search when every activation condition holds and the night's budget is not spent
        (`now_ms`: the vehicle's clock, epoch ms); otherwise the reasons it does not work. A slice
        started within the budget runs to its end, so a night may overrun the budget by one slice."""
        blockers = activation_blockers(heartbeat, self.vehicle_params.charging_sites, self.params.activation)
        if blockers:
            return Step("blocked", tuple(blockers))
        night = night_index(now_ms, self.utc_offset_h, self.params.night_start_local_h)
        if night != self.night:
            self.night, self.spent_s = night, 0.0
            self._save_budget()
        if self.spent_s >= self.params.nightly_budget_s:
            return Step("budget_spent", (f"{self.spent_s:.1f} s of {self.params.nightly_budget_s:.0f} s spent "
                                         "tonight",))
        queue = self.pending()
        if not queue:
            return Step("idle")
        item = queue[0]
        start = self.clock()
        try:
            step = self._work(item, start)
        finally:
            self.spent_s += self.clock() - start
            self._save_budget()
        return step

    def _work(self, item: QueuedWindow, start: float) -> Step:
        try:
            scen, search = self._search_of(item)
            done = search.advance(self.params.slice_iterations)
        except Exception as exc:  # noqa: BLE001 - a window that cannot be replayed must not wedge the queue
            self._drop(item, f"unreplayable: {type(exc).__name__}: {exc}")
            return Step("failed", (str(exc),), item.item_id, self.clock() - start)
        item.iterations_done = search.passes
        if not done:
            buffer = io.BytesIO()
            torch.save(search.snapshot(), buffer)
            _write_atomic(self.items_dir / f"{item.item_id}.search.pt", buffer.getvalue())
            self._save_item(item)
            return Step("searched", (), item.item_id, self.clock() - start, search.passes)
        result = search.finish()
        seconds = self.clock() - start
        solved = Solved(result, None, seconds)
        # The pair's clock is the window's queueing time: the same window gives the same bytes, however
        # many nights its search took.
        data = pair_to_bytes(self.replayer.pair(scen, solved, 0, created_ms=item.queued_ms), self.replayer.config)
        product = Product(item_id=item.item_id, vehicle_id=item.vehicle_id, case_id=item.case_id,
                          trigger_id=item.trigger_id, kind=PAIR, path=str(self.outbox_dir / f"{item.item_id}.pair"),
                          size_bytes=len(data), minilog_bytes=item.size_bytes, search_seconds=seconds,
                          source=result.source[0])
        _write_atomic(Path(product.path), data)
        _write_atomic(self.outbox_dir / f"{item.item_id}.json", _json_bytes(asdict(product)))
        self.products[item.item_id] = product
        self._forget_item(item.item_id)
        return Step("solved", (), item.item_id, seconds, search.passes)

    def _search_of(self, item: QueuedWindow) -> tuple[Any, SlicedSearch]:
        """The item's search: the one in memory, else rebuilt from its minilog and saved progress."""
        if self._active is not None and self._active[0] == item.item_id:
            return self._active[1], self._active[2]
        r = self.replayer
        scen = from_minilog((self.items_dir / f"{item.item_id}.mcap").read_bytes(), self.map_provider, r.config,
                            device=r.device)
        progress = self.items_dir / f"{item.item_id}.search.pt"
        state = torch.load(io.BytesIO(progress.read_bytes())) if progress.exists() else None
        search = SlicedSearch(scen, r.world, r.policy, r.config, self.params.seed, resume_state=state)
        self._active = (item.item_id, scen, search)
        return scen, search

    # --- out: products ---

    def uploads(self, connectivity: int) -> list[Product]:
        """The products to upload now: all of them on Wi-Fi (pairs go over Wi-Fi only), none otherwise."""
        if connectivity != common_pb2.CONNECTIVITY_WIFI:
            return []
        return sorted(self.products.values(), key=lambda p: p.item_id)

    def mark_uploaded(self, item_id: str) -> None:
        """Forget an uploaded product (its files are removed)."""
        product = self.products.pop(item_id)
        Path(product.path).unlink(missing_ok=True)
        (self.outbox_dir / f"{item_id}.json").unlink(missing_ok=True)

    # --- persistence ---

    def _save_item(self, item: QueuedWindow) -> None:
        _write_atomic(self.items_dir / f"{item.item_id}.json", _json_bytes(asdict(item)))

    def _save_budget(self) -> None:
        _write_atomic(self.dir / "budget.json", _json_bytes({"night": self.night, "spent_s": self.spent_s}))

    def _save_waiting(self) -> None:
        _write_atomic(self.dir / "waiting.json", _json_bytes(
            {k: {"trigger": base64.b64encode(t.SerializeToString()).decode(), "case_id": c}
             for k, (t, c) in self.waiting.items()}))
