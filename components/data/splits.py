"""Leave-one-out targets: test = each user's last item, valid = second last, train = earlier ones;
and the training split those targets leave behind."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.data.events import event_seconds


def leave_one_out_targets(interactions: pd.DataFrame, train_examples_per_user: int) -> pd.DataFrame:
    """One row per example: user_id, split, target, target_position, event_seconds.

    Train targets are taken from the latest train positions backwards, at most
    ``train_examples_per_user`` per user, and never at position 0 (an example needs a history).
    """
    frame = interactions[["user_id", "item_id", "position"]].copy()
    frame["event_seconds"] = event_seconds(interactions).to_numpy()
    length = frame.groupby("user_id")["position"].transform("size")
    from_end = length - 1 - frame["position"]  # 0 = last item
    split = np.select([from_end == 0, from_end == 1], ["test", "valid"], default="train")
    keep = (from_end <= 1 + train_examples_per_user) & (frame["position"] >= 1)
    targets = frame.assign(split=split)[keep]
    return (
        targets.rename(columns={"item_id": "target", "position": "target_position"})[
            ["user_id", "split", "target", "target_position", "event_seconds"]
        ]
        .sort_values(["user_id", "target_position"], kind="stable")
        .reset_index(drop=True)
    )


def training_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    """The training part of a leave-one-out split: every user's interactions but the last two.

    Args:
        interactions: user_id, item_id, position (0-based, contiguous per user).

    Returns:
        The rows whose item is neither the user's valid (second last) nor test (last) target, the
        same rule as ``leave_one_out_targets``. Statistics that prompts, traces or baselines learn
        from are computed on these rows only, so no valid or test target leaks into them.
    """
    length = interactions.groupby("user_id")["position"].transform("size")
    return interactions[length - 1 - interactions["position"] >= 2]
