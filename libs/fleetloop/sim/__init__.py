"""Deterministic fleet simulator: vans and trucks on synthetic city maps and highways, with injected
incidents and their ground truth (docs/INCIDENTS.md). Pure: produces (topic, Envelope) messages
per simulated second; publishing them is the CLI's job."""

from fleetloop.sim.config import INCIDENT_KINDS, ScheduledIncident, SimConfig
from fleetloop.sim.fleet import FleetSimulator, SimSecond
from fleetloop.sim.ground_truth import GroundTruth, Incident, MileageRow, VehicleInfo

__all__ = ["INCIDENT_KINDS", "FleetSimulator", "GroundTruth", "Incident", "MileageRow", "ScheduledIncident",
           "SimConfig", "SimSecond", "VehicleInfo"]
