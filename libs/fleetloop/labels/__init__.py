"""Per-second labels: the taxonomy, the batch labeler (`batch.label_seconds`) and the label-table row layout."""

from fleetloop.labels.row import LABEL_TABLE, LabelRow, label_columns, rows_to_columns
from fleetloop.labels.taxonomy import NumericTag, Tag, Taxonomy, TaxonomyError, load_taxonomy, parse_taxonomy

__all__ = [
    "LABEL_TABLE", "LabelRow", "NumericTag", "Tag", "Taxonomy", "TaxonomyError",
    "label_columns", "load_taxonomy", "parse_taxonomy", "rows_to_columns",
]
