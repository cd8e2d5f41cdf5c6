"""Offline sources: the parquet tables ``store.build_feature_tables`` writes.

``feast apply`` on this directory reads them from ``$DGR2_FEATURE_DATA_DIR`` (default ``data``,
relative to the repo). The pipeline registers the directory it built instead
(``store.apply_definitions``), so these paths only matter for the CLI.
"""

import os
from datetime import datetime, timezone

from feast import FileSource

USER_HISTORY_FILE = "user_history.parquet"
ITEM_FEATURES_FILE = "item_features.parquet"

# Item rows describe the catalogue, not an event, but every source row needs an event time. No
# event time precedes the Unix epoch (a user without any review time counts from it, see
# components/data/events.py), so item features are visible at any query time.
ITEM_FEATURES_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)

_DATA_DIR = os.environ.get("DGR2_FEATURE_DATA_DIR", "data")

# No created_timestamp_column: each (entity, event time) has exactly one row, so there is no
# tie to break, and the dask store would pay one more sort per retrieval for it.
user_history_source = FileSource(
    name="user_history_source",
    path=os.path.join(_DATA_DIR, USER_HISTORY_FILE),
    timestamp_field="event_timestamp",
    description="One row per interaction: the user's item history up to and including it.",
)

item_features_source = FileSource(
    name="item_features_source",
    path=os.path.join(_DATA_DIR, ITEM_FEATURES_FILE),
    timestamp_field="event_timestamp",
    description="One row per item, stamped ITEM_FEATURES_TIME.",
)
