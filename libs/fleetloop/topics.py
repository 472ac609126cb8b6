"""Topic names (ARCHITECTURE §3). Every fleet topic is keyed by vehicle id."""

HEARTBEAT = "fleet.heartbeat.v1"
POSE = "fleet.pose.v1"
EVENTS = "fleet.events.v1"
PERCEPTION = "fleet.perception.v1"
COMMANDS = "fleet.commands.v1"
UPLOADS = "fleet.uploads.v1"
ALERTS = "fleet.alerts.v1"
TRIGGERS = "loop.triggers.v1"
CASES = "loop.cases.v1"
REPLAY_REQUESTS = "loop.replay.requests.v1"
SOLUTIONS = "loop.solutions.v1"
DEADLETTER = "loop.deadletter.v1"
TRIGGER_STATE = "loop.trigger-state.v1"  # trigger-engine's compacted checkpoint topic

ALL = (HEARTBEAT, POSE, EVENTS, PERCEPTION, COMMANDS, UPLOADS, ALERTS, TRIGGERS, CASES,
       REPLAY_REQUESTS, SOLUTIONS, DEADLETTER)

# Partitions per topic in embedded mode; a cluster sets its own.
DEFAULT_PARTITIONS = 4

# The service whose dead letter carries the full bytes of a record every consumer of the topic
# refuses alike (fleetloop.codec.STRUCTURAL_REASONS); other consumers' letters point at it.
# heartbeat-ingest reads every fleet topic and is part of every deployment.
LETTER_KEEPER = {HEARTBEAT: "heartbeat-ingest", POSE: "heartbeat-ingest", EVENTS: "heartbeat-ingest",
                 PERCEPTION: "heartbeat-ingest"}
