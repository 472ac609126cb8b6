"""Per-second labels: the taxonomy, the pure labelers and the label-table row layout."""

from fleetloop.labels.labeler import label_second
from fleetloop.labels.row import LABEL_TABLE, LabelRow, label_columns, rows_to_columns
from fleetloop.labels.taxonomy import NumericTag, Tag, Taxonomy, TaxonomyError, load_taxonomy, parse_taxonomy

__all__ = [
    "LABEL_TABLE", "LabelRow", "NumericTag", "Tag", "Taxonomy", "TaxonomyError",
    "label_columns", "label_second", "load_taxonomy", "parse_taxonomy", "rows_to_columns",
]
