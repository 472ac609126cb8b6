"""The deterministic fleet simulator.

One `FleetSimulator.seconds()` step advances every vehicle by one second of event time: ten 10 Hz
kinematic steps vectorised over the fleet with numpy (jerk-limited speed control toward speed
limits, braking curves to stop lines and holds, smooth curvature in turns, lane changes), then the
1 Hz state (tasks, perception, energy, incidents) and the messages of that second. Nothing reads
the wall clock; the same `SimConfig` gives byte-identical messages and ground truth.

The parts, each in its module: `state` (the per-vehicle arrays), `routes` (pieces, holds, tasks),
`kinematics` (motion, pose, energy), `traffic` (lead and agents), `perception`, `events`,
`messages`, `mileage`, and `incidents`, which acts only through `control.VehicleControls`.
All of them draw from the one `rng` of the run, in the order `_second` calls them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fleetloop.sim.config import SimConfig, load_sim_params
from fleetloop.sim.control import VehicleControls
from fleetloop.sim.events import EventQueue, NormalEvents
from fleetloop.sim.ground_truth import GroundTruth, VehicleInfo
from fleetloop.sim.incidents import IncidentBoard
from fleetloop.sim.kinematics import Kinematics
from fleetloop.sim.messages import MessageBuilder
from fleetloop.sim.mileage import MileageAccount
from fleetloop.sim.perception import Perception, PerceptionHooks
from fleetloop.sim.routes import Routes
from fleetloop.sim.state import FleetState, Vehicle
from fleetloop.sim.traffic import Traffic
from fleetloop.sim.world import City, CityMap, CurveBank, Park, weather_hours
from fleetloop.v1 import common_pb2


@dataclass
class SimSecond:
    """One simulated second: its start (epoch ms) and the (topic, envelope) messages of all vehicles."""

    t_ms: int
    messages: list[tuple[str, common_pb2.Envelope]]


def _build_cities(params: dict, cfg: SimConfig, rng: np.random.Generator, bank: CurveBank) -> list[City]:
    """One street grid per ~vehicles_per_city vehicles (at most the cities of sim.yaml), with its parks,
    truck hub and hourly weather."""
    n_cities = min(len(params["cities"]), max(1, math.ceil(cfg.vehicles / params["fleet"]["vehicles_per_city"])))
    hours = cfg.duration_s // 3600 + 2
    cities = []
    for spec in params["cities"][:n_cities]:
        cmap = CityMap(params["map"], params["roads"], rng, bank)
        short = spec["name"][:2]
        parks = []
        for k, region in enumerate(cmap.park_regions):
            nodes = sorted(region)
            parks.append(Park(name=f"{short}-park-{k + 1}", city=spec["name"], nodes=nodes,
                              depot=nodes[len(nodes) // 2]))
        hub = Park(name=f"{short}-hub", city=spec["name"], nodes=[], depot=(0, 0))
        cities.append(City(name=spec["name"], lat0=spec["lat0"], lon0=spec["lon0"],
                           utc_offset_h=spec["utc_offset_h"], map=cmap, parks=parks, hub=hub,
                           weather=weather_hours(rng, hours)))
    return cities


def _build_fleet(params: dict, n: int, cities: list[City], rng: np.random.Generator) -> list[Vehicle]:
    """~truck_share trucks on highway legs from their city's hub, the rest vans on routes of drops in
    their park (some in the city); software versions drawn by share."""
    fleet = params["fleet"]
    n_trucks = int(round(n * fleet["truck_share"])) if n >= 4 else 0
    versions = [v["version"] for v in fleet["software_versions"]]
    shares = np.array([v["share"] for v in fleet["software_versions"]], dtype=float)
    vehicles: list[Vehicle] = []
    tasks = params["tasks"]
    for i in range(n):
        kind = "truck" if i % max(1, round(n / max(n_trucks, 1))) == 1 and n_trucks and \
            sum(v.kind == "truck" for v in vehicles) < n_trucks else "van"
        city = cities[i % len(cities)]
        sw = versions[int(rng.choice(len(versions), p=shares / shares.sum()))]
        vid = f"veh-{i + 1:04d}"
        if kind == "van":
            park = city.parks[(i // len(cities)) % len(city.parks)]
            route_k = int(rng.integers(1, 4))
            veh = Vehicle(i, vid, kind, city, park, f"{park.name}-r{route_k}", sw)
            cmap = city.map
            n_stops = int(rng.integers(tasks["route_stops"][0], tasks["route_stops"][1] + 1))
            urban = [nd for nd in cmap.junction_nodes if not any(nd in r for r in cmap.park_regions)]
            for _ in range(n_stops):
                if rng.random() < tasks["urban_drop_share"]:
                    veh.drop_nodes.append(urban[int(rng.integers(len(urban)))])
                else:
                    veh.drop_nodes.append(park.nodes[int(rng.integers(len(park.nodes)))])
        else:
            leg = int(rng.integers(1, 4))
            veh = Vehicle(i, vid, kind, city, city.hub, f"G{leg * 2 + 40}-{city.name}-{leg}", sw)
        vehicles.append(veh)
    return vehicles


class FleetSimulator:
    """Simulates a fleet second by second; see the module docstring.

    `seconds()` yields one `SimSecond` per simulated second in event-time order; after it is
    exhausted `ground_truth` holds every incident that happened, the cloud-visible mileage and the
    vehicles. `state` is the fleet's numeric state, `hooks` what incidents add to the current second's
    perception, `vehicles` and `cities` the world it drives.
    """

    def __init__(self, config: SimConfig) -> None:
        config.validate()
        self.cfg = config
        self.p = load_sim_params()
        self.rng = np.random.default_rng(config.seed)
        self.bank = CurveBank()
        self.end_ms = config.start_ms + 1000 * config.duration_s
        # the order of construction is the order of the rng's first draws
        self.cities = _build_cities(self.p, config, self.rng, self.bank)
        self.vehicles = _build_fleet(self.p, config.vehicles, self.cities, self.rng)
        self.ground_truth = GroundTruth(vehicles=[
            VehicleInfo(v.vehicle_id, v.park.name, v.city.name, v.kind, v.software_version) for v in self.vehicles])
        self.state = FleetState.create(self.vehicles, self.cities, self.p, self.rng)
        self.events = EventQueue(self.state)
        self.normal_events = NormalEvents(self.state, self.p, self.rng, config.start_ms, self.events)
        self.routes = Routes(self.vehicles, self.state, self.p, self.rng, self.bank)
        for v in self.vehicles:
            self.routes.start_vehicle(v)
        self.kinematics = Kinematics(self.state, self.p, self.rng, self.bank)
        self.traffic = Traffic(self.state, self.p, self.rng)
        self.hooks = PerceptionHooks()
        self.perception = Perception(self.state, self.cities, self.p, self.rng, config.start_ms, self.hooks)
        self.controls = VehicleControls(self.state, self.routes, self.hooks, self.events, self.ground_truth,
                                        self.p, config.seed, self.end_ms)
        self.incidents = IncidentBoard(self.controls, config)
        self.messages = MessageBuilder(self.vehicles, self.state, config.start_ms)
        self.mileage = MileageAccount(self.vehicles, self.kinematics.dt)
        self._finished = False

    def seconds(self) -> Iterator[SimSecond]:
        """Advance the fleet one second at a time (see the class docstring)."""
        if self._finished:
            raise RuntimeError("a FleetSimulator runs once; build a new one to simulate again")
        for k in range(self.cfg.duration_s):
            yield self._second(self.cfg.start_ms + 1000 * k)
        self._finish()

    def _second(self, t_ms: int) -> SimSecond:
        st = self.state
        self.hooks.clear()
        self.events.clear()
        self.routes.holds_and_dwells(t_ms)
        self.incidents.run_second(t_ms)
        self.normal_events.emit_due(t_ms, self.incidents.is_free)
        self.kinematics.lane_change_decisions(t_ms)
        self.traffic.lead_update()
        self.traffic.agents_update(t_ms)
        online = st.online.copy()
        mode0, task0, road0 = st.mode.copy(), st.task_state.copy(), st.road_index.copy()
        perception = self.perception.summaries(t_ms, road0)
        rec = self.kinematics.substeps(t_ms, self.routes.load_piece, self.incidents.on_substep)
        geo = self.kinematics.geometry(rec)
        self.kinematics.energy_and_temperature(geo)
        speed32 = geo["v"].astype(np.float32)
        messages = self.messages.second(t_ms, online, mode0, task0, road0, perception, geo, speed32,
                                        self.events.items)
        self.mileage.add_second(t_ms, online, mode0, task0, road0, speed32)
        return SimSecond(t_ms, messages)

    def _finish(self) -> None:
        self._finished = True
        self.incidents.finish()
        self.ground_truth.incidents.sort(key=lambda r: (r.start_ms, r.incident_id))
        self.ground_truth.mileage = self.mileage.rows()
