-- ODS: fleet messages as received (one row per heartbeat, pose sample, event, perception summary).
-- ReplacingMergeTree on the natural key makes a replayed batch collapse instead of doubling.
CREATE TABLE IF NOT EXISTS ods_heartbeat (
    vehicle_id LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    message_id String,
    mode UInt8,
    speed_mps Float64,
    lat_deg Float64,
    lon_deg Float64,
    x_m Float64,
    y_m Float64,
    road_type UInt8,
    task_id String,
    task_state UInt8,
    city LowCardinality(String),
    park LowCardinality(String),
    route LowCardinality(String),
    software_version LowCardinality(String),
    connectivity UInt8,
    charging UInt8,
    state_of_charge Float32,
    odometer_m Float64,
    compute_temp_c Float32,
    parked UInt8
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (vehicle_id, ts, message_id);

CREATE TABLE IF NOT EXISTS ods_pose (
    vehicle_id LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    x_m Float64,
    y_m Float64,
    lat_deg Float64,
    lon_deg Float64,
    speed_mps Float32,
    accel_lon_mps2 Float32,
    accel_lat_mps2 Float32,
    heading_rad Float32,
    yaw_rate_rps Float32,
    steering_rad Float32,
    throttle Float32,
    brake Float32,
    gear Int8,
    mode UInt8
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (vehicle_id, ts);

CREATE TABLE IF NOT EXISTS ods_vehicle_event (
    vehicle_id LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    message_id String,
    kind UInt8,
    from_mode UInt8,
    to_mode UInt8,
    module LowCardinality(String),
    code LowCardinality(String),
    text String,
    value Float64,
    source LowCardinality(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (vehicle_id, ts, message_id);

CREATE TABLE IF NOT EXISTS ods_perception (
    vehicle_id LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    message_id String,
    weather UInt8,
    light UInt8,
    road_type UInt8,
    junction_type UInt8,
    speed_limit_mps Float32,
    lane_count UInt8,
    lane_index UInt8,
    crosswalk UInt8,
    maneuver LowCardinality(String),
    unprotected_turn UInt8,
    object_count UInt16,
    obj_class Array(UInt8),
    obj_rel_x_m Array(Float32),
    obj_rel_y_m Array(Float32),
    obj_rel_vx_mps Array(Float32),
    obj_rel_vy_mps Array(Float32),
    obj_confidence Array(Float32)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (vehicle_id, ts, message_id);
