"""`label_second`: all family labelers over one vehicle-second, packed into a `LabelRow`."""

from __future__ import annotations

import numpy as np

from fleetloop.labels.labelers import LABELERS, SecondInputs
from fleetloop.labels.row import LabelRow
from fleetloop.labels.taxonomy import Taxonomy
from fleetloop.v1 import common_pb2 as pb


def label_second(vehicle_id: str, second_ms: int, heartbeat: pb.Heartbeat | None,
                 pose: pb.PoseBatch | None, perception: pb.PerceptionSummary | None,
                 taxonomy: Taxonomy) -> LabelRow:
    """Label one vehicle-second.

    vehicle_id: the envelope's vehicle id. second_ms: any event time inside the second,
    epoch ms UTC (floored to the second). heartbeat / pose / perception: that second's
    messages, each may be None. Returns a LabelRow whose `known` bitset marks the tags the
    inputs allowed to evaluate; everything else is unknown (e.g. no perception => weather,
    light, agents unknown, and `data.no_perception` is TRUE). Numeric values are rounded
    to float32, the column type, so the row equals what the table returns. A malformed
    PoseBatch (column lengths not matching sample_count) raises `fleetloop.codec.Rejected`;
    validate with `codec.pose_arrays` upstream and dead-letter it.
    """
    inputs = SecondInputs.of(heartbeat, pose, perception)
    tags = known = 0
    values: dict[str, float] = {}
    for family, labeler in LABELERS.items():
        result = labeler(inputs, taxonomy.thresholds)
        for name, value in result.tags.items():
            tag = taxonomy.tag(name)
            if tag.family != family:
                raise ValueError(f"labeler {family!r} emitted {name!r} of family {tag.family!r}")
            known |= 1 << tag.bit
            if value:
                tags |= 1 << tag.bit
        for name, number in result.values.items():
            if np.isfinite(number):
                values[name] = float(np.float32(number))
    park = heartbeat.park if heartbeat is not None else ""
    city = heartbeat.city if heartbeat is not None else ""
    return LabelRow(vehicle_id=vehicle_id, ts_ms=second_ms - second_ms % 1000, tags=tags, known=known,
                    values=values, taxonomy_version=taxonomy.version, park=park, city=city)
