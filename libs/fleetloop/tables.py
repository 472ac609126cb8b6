"""Warehouse tables read across service boundaries: name, owning service, the columns readers rely on.

The owner's migrations (services/<owner>/migrations) are the truth; tests/unit/test_tables.py checks that
every declared column exists there. A reader names a table through this registry instead of a copied
string, and relies only on the declared columns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    owner: str                   # the service whose migrations create and whose code writes the table
    columns: tuple[str, ...]     # the columns other services read

    def __str__(self) -> str:
        return self.name


LABEL_SECOND = Table("dwd_label_second", "label_indexer",
                     ("vehicle_id", "ts", "park", "city", "taxonomy_version", "t0", "k0"))
INDEX_HOUR = Table("dwd_label_index_hour", "label_indexer", ("hour", "version", "sealed", "vehicles", "rows"))
INDEX_BITMAP = Table("dwd_label_index_bitmap", "label_indexer", ("hour", "key", "version", "bitmap"))
VEHICLE_SECOND = Table("dwd_vehicle_second", "heartbeat_ingest", ("vehicle_id", "ts", "distance_m"))
FLEET_DAY = Table("dws_fleet_day", "heartbeat_ingest", ("day", "vehicle_id", "park", "distance_m", "seconds",
                                                        "operating_s", "autonomous_s", "moving_s"))
CASES = Table("cases", "case_assembler",
              ("case_id", "vehicle_id", "window_start", "window_end", "triggers"))
TRIGGER_EVENTS = Table("trigger_events", "case_assembler",
                       ("vehicle_id", "onset", "trigger", "category"))
CASE_LOGS = Table("case_logs", "case_assembler", ("case_id", "tier", "status", "uri", "size_bytes", "sha256"))
SOLUTIONS = Table("replay_solutions", "replay_validator",
                  ("solution_id", "case_id", "vehicle_id", "policy", "search_config_version", "verdict",
                   "baseline_terms", "solution_terms", "baseline_total", "solution_total", "triggers_removed",
                   "pair_uri", "pair_size_bytes", "requested", "solution_json"))

REGISTRY: tuple[Table, ...] = (LABEL_SECOND, INDEX_HOUR, INDEX_BITMAP, VEHICLE_SECOND, FLEET_DAY, CASES,
                               TRIGGER_EVENTS, CASE_LOGS, SOLUTIONS)
