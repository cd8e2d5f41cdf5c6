"""Feature views: a user's item history at each interaction, and the item catalogue."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Int64, String

# `feast apply` chdirs into this directory and imports each file as a top-level module; the
# pipeline imports the same files as the `feature_repo` package. Importing siblings the way this
# module itself was imported keeps one object per definition, so Feast never sees two `user`s.
if __package__:
    from .data_sources import item_features_source, user_history_source
    from .entities import item, user
else:
    from data_sources import item_features_source, user_history_source
    from entities import item, user

OWNER = "dgr2-ml-platform"

# A TTL of 0 means rows never expire. The data spans 2002-2014 and a user's last history stays
# their history however old it is; any finite TTL would drop long-inactive users from
# point-in-time joins, and the item rows (stamped at the epoch) from every join.
NO_EXPIRY = timedelta(0)

# The history is stored as text, not Array(String): the dask offline store tokenizes every frame
# it persists, and it tokenizes a column of lists by pickling every value. On the full dataset
# (2 CPUs) a list column took 114 s for a 90,000-row point-in-time join and 40 s to materialize;
# as text, 5 s and 4 s. on_demand.py turns the text back into a list when it is read.
user_history_view = FeatureView(
    name="user_history_view",
    entities=[user],
    ttl=NO_EXPIRY,
    schema=[
        Field(
            name="history_item_ids_text",
            dtype=String,
            description=(
                "Item ids the user interacted with up to and including this event, most recent last, "
                "separated by single spaces. Read history_item_ids (on_demand.py) instead."
            ),
        ),
        Field(name="history_length", dtype=Int64, description="Number of item ids in the history."),
    ],
    source=user_history_source,
    online=True,
    description=(
        "A user's interaction history as of each of their interactions. Event times are the review day "
        "plus the interaction's position in seconds (components/data/events.py), so same-day reviews "
        "never tie and an as-of join at t holds exactly the interactions at or before t."
    ),
    owner=OWNER,
    tags={"grain": "user-interaction", "dataset": "amazon-beauty"},
)

item_features_view = FeatureView(
    name="item_features_view",
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[
        Field(name="sid", dtype=String, description="Semantic ID string, e.g. <s_a_97><s_b_168><s_c_137><s_d_3>."),
        Field(name="title", dtype=String, description="Product title; empty when the metadata has none."),
        Field(name="brand", dtype=String, description="Brand; null when the metadata has none."),
        Field(name="categories", dtype=Array(String), description="Category names, root category dropped."),
        Field(
            name="co_purchase_text",
            dtype=String,
            description=(
                "Items co-bought with this one in the training split (every user's interactions but the "
                "last two), as 'item_id:users' separated by spaces, most first; see "
                "feature_repo/co_purchase.py."
            ),
        ),
        Field(
            name="popularity",
            dtype=Int64,
            description=(
                "Interactions with the item in the whole dataset version: a catalogue statistic, not point-in-time."
            ),
        ),
    ],
    source=item_features_source,
    online=True,
    description="Static item attributes and semantic IDs, one row per item stamped at the Unix epoch.",
    owner=OWNER,
    tags={"grain": "item", "dataset": "amazon-beauty"},
)
