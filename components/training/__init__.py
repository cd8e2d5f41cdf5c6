"""The training loop every stage shares: the stage supplies model, batches and loss."""

from components.training.loop import (
    TOKENS_KEY,
    TrainResult,
    TrainState,
    batch_indices,
    derive_seed,
    latest_checkpoint,
    load_checkpoint,
    lr_multiplier,
    seed_everything,
    train,
)

__all__ = [
    "TOKENS_KEY",
    "TrainResult",
    "TrainState",
    "batch_indices",
    "derive_seed",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_multiplier",
    "seed_everything",
    "train",
]
