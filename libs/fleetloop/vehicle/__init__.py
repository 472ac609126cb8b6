"""The vehicle-side runtime (ARCHITECTURE §2): a ring buffer of each vehicle's recent messages, the
uploader that answers upload commands by cutting the window and writing each tier as an MCAP file to
an object store, and `FleetVehicles`, which lets simulated vehicles do the same over Kafka.

    vehicles = FleetVehicles(settings, bus)
    task = asyncio.create_task(vehicles.run(stop))           # answers fleet.commands.v1
    await publish_seconds(bus, vehicles.pass_through(sim.seconds()))
"""

from fleetloop.vehicle.fleet import FleetVehicles
from fleetloop.vehicle.logs import TIERS, read_mcap, tier_messages, write_mcap
from fleetloop.vehicle.objectstore import FileObjectStore, ObjectStore, open_store
from fleetloop.vehicle.params import VehicleParams, load_vehicle_params
from fleetloop.vehicle.ring import RingBuffer
from fleetloop.vehicle.uploader import Uploader

__all__ = ["TIERS", "FileObjectStore", "FleetVehicles", "ObjectStore", "RingBuffer", "Uploader", "VehicleParams",
           "load_vehicle_params", "open_store", "read_mcap", "tier_messages", "write_mcap"]
