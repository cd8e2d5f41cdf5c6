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
    schema=[
        Field(
            name="history_item_ids",
            dtype=Array(String),
            description="Item ids the user interacted with up to and including the event, most recent last.",
        )
    ],
    mode="pandas",
    description="user_history_view's history as a list; empty for a user with no interaction yet.",
    owner=OWNER,
    tags={"grain": "user-interaction", "dataset": "amazon-beauty"},
)
def user_history_items_view(features: pd.DataFrame) -> pd.DataFrame:
    # Self-contained: Feast serializes this function into the registry. A user with no history
    # at the requested time arrives as a missing value.
    texts = features["history_item_ids_text"].astype(object).where(features["history_item_ids_text"].notna(), "")
    return pd.DataFrame({"history_item_ids": [text.split() for text in texts]}, index=features.index)
