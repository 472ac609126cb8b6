-- Per-second labels (DWD layer): one row per vehicle-second, written by label-indexer.
--
-- Bitsets: tag bit b lives in word b / 64 at position b % 64 (taxonomy.yaml `bit`).
--   t<w>: the tag is TRUE.  k<w>: the tag was evaluated (TRUE or FALSE); t ⊆ k.
--   A tag whose k bit is 0 is UNKNOWN for the row: its input was missing that second, or
--   the tag is newer than the row's taxonomy_version. Queries never treat unknown as false.
-- Bit words rather than one column per tag: a conjunction of tags in one word is a single
--   bitAnd(t0, mask) = mask over one column; adding a tag needs no DDL. Measured against
--   per-tag UInt8 columns in fleetloop.query.compiler's docstring (even for one word,
--   per-tag faster when a query spans words). 4 words = 256 tags; a 5th is ALTER ADD COLUMN.
-- Numeric values: one Float32 column each, NaN when unknown (comparisons with NaN are false).
-- Idempotent re-labelling: ReplacingMergeTree keyed by (vehicle_id, ts); the row with the
--   highest taxonomy_version wins, and among equal versions the last inserted. Readers use FINAL.
-- ORDER BY (vehicle_id, ts): the replacing key, and clip building scans each vehicle's
--   seconds in time order; time ranges prune by monthly partition and the ts minmax index.
CREATE TABLE IF NOT EXISTS dwd_label_second
(
    vehicle_id LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    park LowCardinality(String),
    city LowCardinality(String),
    taxonomy_version UInt16,
    t0 UInt64, t1 UInt64, t2 UInt64, t3 UInt64,
    k0 UInt64, k1 UInt64, k2 UInt64, k3 UInt64,
    v_ego_speed_kph Float32,
    v_ego_accel_lon_mps2 Float32,
    v_ego_min_accel_lon_mps2 Float32,
    v_ego_max_abs_yaw_rate_rps Float32,
    v_ego_max_abs_accel_lat_mps2 Float32,
    v_agent_count Float32,
    v_agent_vehicle_count Float32,
    v_agent_pedestrian_count Float32,
    v_agent_cyclist_count Float32,
    v_agent_tricycle_count Float32,
    v_agent_min_distance_m Float32,
    v_agent_lead_distance_m Float32,
    v_agent_lead_ttc_s Float32,
    v_road_speed_limit_kph Float32,
    v_road_lane_count Float32,
    v_perception_min_confidence Float32,
    v_planner_top_cost_gap Float32,
    v_vehicle_state_of_charge Float32,
    v_vehicle_compute_temp_c Float32,
    INDEX ts_minmax ts TYPE minmax GRANULARITY 1,
    INDEX park_set park TYPE set(256) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(taxonomy_version)
PARTITION BY toYYYYMM(ts)
ORDER BY (vehicle_id, ts);
