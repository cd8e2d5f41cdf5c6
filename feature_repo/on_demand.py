"""On-demand views: typed features decoded from stored ones when they are read."""

import pandas as pd
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, String

# See features.py for why siblings are imported this way.
if __package__:
    from .features import OWNER, user_history_view
else:
    from features import OWNER, user_history_view


@on_demand_feature_view(
    sources=[user_history_view[["history_item_ids_text"]]],
    # No Field description: the registry drops those of on-demand fields, and a feature service
    # still holding one then fails to resolve (feast 0.67 compares whole fields). The view's
    # description says what the field holds.
    schema=[Field(name="history_item_ids", dtype=Array(String))],
    mode="pandas",
    description=(
        "history_item_ids: the item ids the user interacted with up to and including the event, most "
        "recent last (user_history_view's text as a list); empty for a user with no interaction yet."
    ),
    owner=OWNER,
    tags={"grain": "user-interaction", "dataset": "amazon-beauty"},
)
def user_history_items_view(features: pd.DataFrame) -> pd.DataFrame:
    # Self-contained: Feast serializes this function into the registry by value, without this
    # module's globals, so it imports what it uses. A user with no history at the requested time
    # arrives as a missing value.
    import pandas as pd

    return pd.DataFrame({"history_item_ids": features["history_item_ids_text"].fillna("").str.split()})
