"""The in-place KV cache holds what transformers' DynamicCache holds, without copying on append."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from components.decoding.cache import MIN_SPARE, InPlaceCache


def _states(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, length, 4, generator=generator), torch.randn(batch, 2, length, 4, generator=generator)


def _same(a: DynamicCache, b: DynamicCache) -> None:
    assert a.get_seq_length() == b.get_seq_length()
    for left, right in zip(a.layers, b.layers, strict=True):
        assert torch.equal(left.keys, right.keys) and torch.equal(left.values, right.values)


def test_appends_crops_and_selects_like_the_dynamic_cache():
    ours, reference = InPlaceCache(), DynamicCache()
    # A prompt, a block, its crop, a block grown past the spare room, then a batch selection.
    for step, (length, crop) in enumerate([(7, 0), (4, 4), (4, 0), (MIN_SPARE + 3, 2)]):
        for layer in range(2):
            keys, values = _states(3, length, seed=10 * step + layer)
            returned = ours.update(keys, values, layer)
            expected = reference.update(keys, values, layer)
            assert torch.equal(returned[0], expected[0]) and torch.equal(returned[1], expected[1])
        if crop:
            ours.crop(-crop)
            reference.crop(-crop)
        _same(ours, reference)
    ours.batch_select_indices(torch.tensor([2, 0]))
    reference.batch_select_indices(torch.tensor([2, 0]))
    _same(ours, reference)


def test_an_append_within_the_spare_room_writes_in_place():
    cache = InPlaceCache()
    cache.update(*_states(2, 10, seed=0), 0)
    buffer = cache.layers[0].keys.data_ptr()
    cache.update(*_states(2, 8, seed=1), 0)
    cache.crop(-8)
    cache.update(*_states(2, 8, seed=2), 0)
    assert cache.layers[0].keys.data_ptr() == buffer  # same storage: no copy of the 10 cached positions
    assert cache.get_seq_length() == 18
