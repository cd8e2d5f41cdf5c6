"""Feature services: one per registered model version, which asks for features by service name."""

from feast import FeatureService

# See features.py for why siblings are imported this way.
if __package__:
    from .features import OWNER, item_features_view
    from .on_demand import user_history_items_view
else:
    from features import OWNER, item_features_view
    from on_demand import user_history_items_view

# What the re-ranker's prompt is built from: the user's history, the text of each item and its
# co-purchases on the training split (the prompt's co-purchase line). popularity stays out: it counts the whole dataset, so it would leak later interactions into
# training examples.
reranker_v1 = FeatureService(
    name="reranker_v1",
    features=[
        user_history_items_view,
        item_features_view[["sid", "title", "brand", "categories", "co_purchase_text"]],
    ],
    description="Features of the GR2 / Diffusion-GR2 re-ranker, version 1.",
    owner=OWNER,
    tags={"model": "reranker", "version": "1"},
)
