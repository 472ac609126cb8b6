-- Metrics (MPS / MPD / MPI): every TriggerEvent of loop.triggers.v1 and the latest adjudication of
-- every case of loop.cases.v1, joined at query time with the mileage of dwd_vehicle_second.
-- Names avoid case-assembler's own `trigger_events` and `cases` tables.

-- One row per trigger_id; a replayed or re-sent event (same deterministic id, same onset) collapses.
CREATE TABLE IF NOT EXISTS trigger_events_metric (
    trigger_id String,
    vehicle_id LowCardinality(String),
    trigger LowCardinality(String),
    category UInt8,
    severity Float64,
    weight Float64,
    onset_ts DateTime64(3, 'UTC'),
    end_ts DateTime64(3, 'UTC'),
    config_version LowCardinality(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(onset_ts)
ORDER BY (vehicle_id, onset_ts, trigger_id);

-- One row per case, the highest revision wins: its verdict, responsibility and the trigger ids it
-- groups (merged triggers and those folded in by the cooldown).
CREATE TABLE IF NOT EXISTS case_verdicts (
    case_id String,
    vehicle_id LowCardinality(String),
    revision UInt64,
    verdict UInt8,
    responsibility UInt8,
    trigger_ids Array(String),
    updated_ms Int64
) ENGINE = ReplacingMergeTree(revision)
ORDER BY case_id;
