"""A KV cache that appends in place: what both decoders use on CPU.

transformers' ``DynamicCache`` appends by concatenation, so every forward copies the whole cache
(every layer's keys and values) to add a token or a block; the block decoder then crops the noisy
block off and copies it all again on the next denoising step. Here each layer keeps one buffer
with room to spare, writes new keys and values into it, and hands attention a view of the filled
part: a forward copies only its own tokens, and a crop only moves the end of the view. A
``StaticCache`` also writes in place, but attends over all its preallocated slots.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

# Spare room allocated with each growth, in tokens; growth doubles past it (amortised copies).
MIN_SPARE = 256


class InPlaceLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of a preallocated buffer."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def _reserve(self, length: int, like: torch.Tensor) -> None:
        """Make the buffers hold at least ``length`` positions, keeping what is filled."""
        if self._key_buffer is not None and self._key_buffer.shape[-2] >= length:
            return
        capacity = max(length + MIN_SPARE, 2 * (0 if self._key_buffer is None else self._key_buffer.shape[-2]))
        shape = (*like.shape[:-2], capacity, like.shape[-1])
        keys, values = like.new_empty(shape), like.new_empty(shape)
        filled = self.get_seq_length()
        if filled:
            keys[..., :filled, :] = self.keys
            values[..., :filled, :] = self.values
        self._key_buffer, self._value_buffer = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        self._reserve(end, key_states)
        self._key_buffer[..., start:end, :] = key_states
        self._value_buffer[..., start:end, :] = value_states
        self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            filled = self.get_seq_length()
            self._key_buffer, self._value_buffer = self._key_buffer[indices], self._value_buffer[indices]
            self.keys, self.values = self._key_buffer[..., :filled, :], self._value_buffer[..., :filled, :]


class InPlaceCache(DynamicCache):
    """A ``DynamicCache`` of :class:`InPlaceLayer` (same interface: update, crop, batch selection)."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=InPlaceLayer)

    def select_rows(self, indices: torch.Tensor) -> InPlaceCache:
        """A new cache holding copies of batch rows ``indices`` (with the usual spare room).

        The block decoder runs a denoising step on the rows that still have masked positions
        through such a copy: the step's keys and values are thrown away after it anyway.
        """
        selected = InPlaceCache()
        for index, layer in enumerate(self.layers):
            selected.update(layer.keys[indices], layer.values[indices], index)
        return selected
