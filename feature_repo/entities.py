"""Entities: the keys features are joined on."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A reviewer in the Amazon Beauty dataset (reviewerID, or its remapped id).",
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A product in the Amazon Beauty dataset (asin, or its remapped id).",
)
