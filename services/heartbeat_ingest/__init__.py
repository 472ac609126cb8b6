"""heartbeat-ingest: lands heartbeat, pose, events and perception in ClickHouse (ODS → DWD →
DWS → ADS), keeps each vehicle's live state in Redis and serves FleetService."""
