"""The training loop every stage shares: the stage supplies model, batches and loss."""

from components.training.loop import (
    LOSS_WEIGHT_KEY,
    TOKENS_KEY,
    TrainResult,
    TrainState,
    batch_indices,
    derive_seed,
    latest_checkpoint,
    length_sorted_micro_batch,
    load_checkpoint,
    lr_multiplier,
    seed_everything,
    train,
)

__all__ = [
    "LOSS_WEIGHT_KEY",
    "TOKENS_KEY",
    "TrainResult",
    "TrainState",
    "batch_indices",
    "derive_seed",
    "latest_checkpoint",
    "length_sorted_micro_batch",
    "load_checkpoint",
    "lr_multiplier",
    "seed_everything",
    "train",
]
