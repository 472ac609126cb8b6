-- The mining index (label-indexer writes it, the miner reads it): per UTC hour of the fleet,
-- one roaring bitmap per tag state (see fleetloop.query.index for the id layout and keys).
--
-- dwd_label_index_hour: the hour's directory. The label-indexer inserts (hour, new version,
--   sealed = 0) before it writes label rows into an hour, and (hour, newer version, sealed = 1,
--   vehicles, rows) after it has written that hour's bitmaps, once the event-time watermark
--   has passed the hour's end. Readers take the latest version per hour (FINAL): a sealed
--   hour is answered from its bitmaps, an unsealed hour by scanning dwd_label_second.
-- dwd_label_index_bitmap: the bitmaps, portable roaring format. Readers use only rows whose
--   version equals the hour's sealed version (a rebuild may drop keys, e.g. a park).
CREATE TABLE IF NOT EXISTS dwd_label_index_hour
(
    hour DateTime('UTC'),
    version UInt64,
    sealed UInt8,
    vehicles Array(String),
    rows UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY hour;

CREATE TABLE IF NOT EXISTS dwd_label_index_bitmap
(
    hour DateTime('UTC'),
    key LowCardinality(String),
    version UInt64,
    bitmap String CODEC(ZSTD(1))
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (hour, key);
