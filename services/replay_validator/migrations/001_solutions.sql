-- replay-validator owns this table: one row per case x policy version x search configuration. The
-- solution id is a hash of those three, so a request replayed after a crash, or asked twice, rewrites
-- the same row (ReplacingMergeTree keyed by solution_id, read with FINAL).
CREATE TABLE IF NOT EXISTS replay_solutions (
    solution_id String,
    case_id String,
    vehicle_id String,
    request_id String,
    policy LowCardinality(String),
    search_config LowCardinality(String),
    search_config_version LowCardinality(String),
    verdict LowCardinality(String),
    source LowCardinality(String),
    baseline_terms Map(String, Float64),
    solution_terms Map(String, Float64),
    baseline_total Float64,
    solution_total Float64,
    baseline_score Float64,
    solution_score Float64,
    triggers_removed Map(String, UInt32),
    win_rate Float64,
    pair_uri String,
    pair_size_bytes UInt64,
    device LowCardinality(String),
    requested DateTime64(3, 'UTC'),
    solution_json String
) ENGINE = ReplacingMergeTree
ORDER BY solution_id;
