"""trigger-engine: runs the trigger library (libs/fleetloop/triggers) over the fleet topics, one
runner per vehicle with its state checkpointed to a compacted topic, and emits TriggerEvents to
loop.triggers.v1. It needs no database, so it scales by replicas of one consumer group."""
