-- case-assembler owns these tables. Every row is keyed by its natural key and versioned, so a batch
-- replayed after a crash collapses into the same rows (ReplacingMergeTree, read with FINAL).

-- Every TriggerEvent seen on loop.triggers.v1 and the case it went to (case_id; a cooldown repeat
-- has case_id '' and suppressed_by = the case it was folded into).
CREATE TABLE IF NOT EXISTS trigger_events (
    trigger_id String,
    vehicle_id String,
    trigger LowCardinality(String),
    category UInt8,
    severity Float64,
    weight Float64,
    onset DateTime64(3, 'UTC'),
    peak DateTime64(3, 'UTC'),
    end DateTime64(3, 'UTC'),
    window_pre_s Float32,
    window_post_s Float32,
    measurements Map(String, Float64),
    detail String,
    config_version LowCardinality(String),
    case_id String,
    suppressed_by String,
    revision UInt64
) ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(onset)
ORDER BY trigger_id;

-- The current record of every case (highest revision wins). case_json is the full Case message
-- (protobuf JSON, proto field names) that CaseService returns.
CREATE TABLE IF NOT EXISTS cases (
    case_id String,
    vehicle_id String,
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    category UInt8,
    severity Float64,
    priority Float64,
    status UInt8,
    triggers Array(LowCardinality(String)),
    trigger_ids Array(String),
    tiers Array(LowCardinality(String)),
    tier_status Map(String, String),
    replay_queued UInt8,
    verdict UInt8,
    responsibility UInt8,
    reviewer String,
    revision UInt64,
    updated DateTime64(3, 'UTC'),
    case_json String
) ENGINE = ReplacingMergeTree(revision)
ORDER BY case_id;

-- One row per (case, tier): where its upload stands and, once complete, the object and its size.
-- declared_bytes is what the tier stands for on a real vehicle (raw: an estimate in simulation).
CREATE TABLE IF NOT EXISTS case_logs (
    case_id String,
    vehicle_id String,
    tier LowCardinality(String),
    status LowCardinality(String),
    attempt UInt16,
    request_id String,
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    requested DateTime64(3, 'UTC'),
    updated DateTime64(3, 'UTC'),
    uri String,
    size_bytes UInt64,
    declared_bytes UInt64,
    sha256 String,
    message_count UInt32,
    metered UInt8,
    reason String,
    revision UInt64
) ENGINE = ReplacingMergeTree(revision)
ORDER BY (case_id, tier);
