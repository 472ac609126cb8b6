-- DWD: one row per vehicle-second, joined from the heartbeat (state, dimensions) and the pose
-- batch (distance = sum of speed x 0.1 s over its 10 Hz samples). The two halves arrive as
-- separate partial rows; SimpleAggregateFunction(max) merges them and keeps replays idempotent
-- (max of the same value twice is that value). Query it with FINAL.
CREATE TABLE IF NOT EXISTS dwd_vehicle_second (
    vehicle_id LowCardinality(String),
    ts DateTime('UTC'),
    has_heartbeat SimpleAggregateFunction(max, UInt8),
    has_pose SimpleAggregateFunction(max, UInt8),
    distance_m SimpleAggregateFunction(max, Float64),
    mode SimpleAggregateFunction(max, UInt8),
    task_state SimpleAggregateFunction(max, UInt8),
    road_type SimpleAggregateFunction(max, UInt8),
    speed_mps SimpleAggregateFunction(max, Float64),
    city SimpleAggregateFunction(max, LowCardinality(String)),
    park SimpleAggregateFunction(max, LowCardinality(String)),
    route SimpleAggregateFunction(max, LowCardinality(String)),
    software_version SimpleAggregateFunction(max, LowCardinality(String))
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (vehicle_id, ts);

-- DWS: the daily business summary per vehicle and dimension. Recomputed a whole day at a time
-- from DWD (staging table + REPLACE PARTITION), so a late heartbeat never leaves a stale row.
CREATE TABLE IF NOT EXISTS dws_fleet_day (
    day Date,
    vehicle_id LowCardinality(String),
    city LowCardinality(String),
    park LowCardinality(String),
    route LowCardinality(String),
    road_type UInt8,
    software_version LowCardinality(String),
    distance_m Float64,
    seconds UInt32,
    operating_s UInt32,
    autonomous_s UInt32,
    moving_s UInt32
) ENGINE = MergeTree
PARTITION BY day
ORDER BY (day, vehicle_id, park, road_type);

CREATE TABLE IF NOT EXISTS dws_fleet_day_staging AS dws_fleet_day;

-- ADS: what reports read; per day and park, with the ratios computed once.
CREATE VIEW IF NOT EXISTS ads_fleet_park_day AS
SELECT
    day, city, park,
    sum(distance_m) / 1000 AS km,
    sum(operating_s) / 3600 AS operating_h,
    sum(autonomous_s) / 3600 AS autonomous_h,
    sum(moving_s) / 3600 AS moving_h,
    if(sum(operating_s) > 0, sum(autonomous_s) / sum(operating_s), 0) AS autonomy_rate,
    if(sum(moving_s) > 0, (sum(distance_m) / 1000) / (sum(moving_s) / 3600), 0) AS avg_speed_kph,
    uniqExact(vehicle_id) AS vehicles
FROM dws_fleet_day
GROUP BY day, city, park;

CREATE VIEW IF NOT EXISTS ads_fleet_road_type_day AS
SELECT
    day, city, park, road_type,
    sum(distance_m) / 1000 AS km
FROM dws_fleet_day
GROUP BY day, city, park, road_type;
