"""SFT encoding: weights per token span, collation, the weighted loss, and a few training steps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from components.config import ModelConfig, PromptConfig, SftConfig, TrainingConfig
from components.modeling.factory import build_model
from components.modeling.tokenizer import IM_END, build_tokenizer
from components.prompts import CatalogItem, ItemCatalog, render_answer, render_messages
from components.semantic_ids.format import all_sid_tokens, sid_string
from components.training import LOSS_WEIGHT_KEY, TOKENS_KEY, batch_indices, length_sorted_micro_batch, train
from components.training.sft import (
    ANSWER,
    PROMPT,
    REASONING,
    EncodedExample,
    ExampleTooLong,
    collate,
    encode_sft_example,
    weighted_lm_loss,
)

# Two SID levels of 16 codes keep the vocabulary, and so the tiny model, small.
SID_SIZES = [16, 16]
CATEGORIES = [("Makeup", "Nails", "Nail Polish"), ("Skin Care", "Face", "Creams"), ("Hair Care", "Shampoos")]
CFG = SftConfig(lambda_reasoning=0.25, lambda_answer=1.0)
# Starts and ends with a letter, so no BPE token can straddle the reasoning value's quotes.
REASONING_TEXT = "History is mostly {cat} bought again and again so the {cat} candidate comes first"


def make_catalog(count: int = 12) -> ItemCatalog:
    """``count`` items ``i0..`` with distinct 2-level SIDs, a category path and a title."""
    return ItemCatalog(
        CatalogItem(
            item_id=f"i{k}",
            sid=sid_string([k % 16, (k * 5) % 16]),
            title=f"Item {k}",
            brand=None,
            categories=CATEGORIES[k % len(CATEGORIES)],
        )
        for k in range(count)
    )


def make_example(catalog: ItemCatalog, start: int) -> tuple[list[dict[str, str]], str, list[str]]:
    """A 4-item history and 3 candidates: (messages, reasoning, ranking SIDs)."""
    ids = [f"i{(start + k) % len(catalog)}" for k in range(7)]
    messages = render_messages(ids[:4], ids[4:], catalog, PromptConfig())
    reasoning = REASONING_TEXT.format(cat=catalog.item(ids[4]).leaf_category)
    return messages, reasoning, catalog.sids(list(reversed(ids[4:])))


@pytest.fixture(scope="session")
def catalog() -> ItemCatalog:
    return make_catalog()


@pytest.fixture(scope="session")
def tokenizer(catalog):
    texts = []
    for start in range(len(catalog)):
        messages, reasoning, ranking = make_example(catalog, start)
        # Answers whose reasoning ends in "." teach BPE to merge it with the closing quote.
        texts += [m["content"] for m in messages] + [render_answer(reasoning + end, ranking) for end in ("", ".")]
    return build_tokenizer(texts, all_sid_tokens(len(SID_SIZES), SID_SIZES), vocab_size=400)


def messages_with_longer_prompt(catalog: ItemCatalog) -> list[dict[str, str]]:
    return render_messages([f"i{k}" for k in range(8)], ["i1", "i2"], catalog, PromptConfig())


def _decoded_segments(tokenizer, example: EncodedExample) -> dict[tuple[int, float], str]:
    """The decoded text of each (segment, weight) run, the runs of one kind joined."""
    texts: dict[tuple[int, float], str] = {}
    for token_id, segment, weight in zip(example.input_ids, example.segments, example.loss_weights):
        key = (segment, weight)
        texts[key] = texts.get(key, "") + tokenizer.decode([token_id])
    return texts


def test_weights_cover_prompt_reasoning_and_answer_exactly(tokenizer, catalog) -> None:
    messages, reasoning, ranking = make_example(catalog, 0)
    example = encode_sft_example(tokenizer, messages, reasoning, ranking, CFG, max_length=512)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answer = render_answer(reasoning, ranking)

    assert len(example.input_ids) == len(example.loss_weights) == len(example.segments)
    assert tokenizer.decode(example.input_ids) == prompt + answer + IM_END
    spans = _decoded_segments(tokenizer, example)
    assert spans.keys() == {(PROMPT, 0.0), (REASONING, 0.25), (ANSWER, 1.0)}
    assert spans[(PROMPT, 0.0)] == prompt
    assert spans[(REASONING, 0.25)] == reasoning
    # The answer weight covers the JSON around the reasoning, the ranking and the end token.
    assert spans[(ANSWER, 1.0)] == answer.replace(reasoning, "") + IM_END
    # Each kind is one contiguous run: prompt, then reasoning inside the answer.
    kinds = [s for i, s in enumerate(example.segments) if i == 0 or s != example.segments[i - 1]]
    assert kinds == [PROMPT, ANSWER, REASONING, ANSWER]


def test_reasoning_weight_never_covers_json_syntax(tokenizer, catalog) -> None:
    # Escapes and a final "." that BPE may merge with the closing quote: the reasoning weight goes
    # only to tokens wholly inside the escaped value, everything else keeps the answer weight.
    messages, _, ranking = make_example(catalog, 1)
    reasoning = 'Says "repeat"\nbuyer. Nail Polish first.'
    example = encode_sft_example(tokenizer, messages, reasoning, ranking, CFG, max_length=512)
    escaped = json.dumps(reasoning)[1:-1]
    spans = _decoded_segments(tokenizer, example)
    answer = render_answer(reasoning, ranking)
    head = '{"reasoning":"'
    weighted_reasoning = spans[(REASONING, 0.25)]
    # The final "." shares a token with the closing quote, so it keeps the answer weight.
    assert weighted_reasoning == escaped[:-1]
    assert spans[(ANSWER, 1.0)] == head + escaped[len(weighted_reasoning) :] + answer[len(head + escaped) :] + IM_END
    assert tokenizer.decode(example.input_ids).endswith(answer + IM_END)


def test_too_long_example_raises_with_its_length(tokenizer, catalog) -> None:
    messages, reasoning, ranking = make_example(catalog, 2)
    length = len(encode_sft_example(tokenizer, messages, reasoning, ranking, CFG, max_length=512).input_ids)
    with pytest.raises(ExampleTooLong, match=rf"example is {length} tokens .*max_length {length - 1}"):
        encode_sft_example(tokenizer, messages, reasoning, ranking, CFG, max_length=length - 1)
    assert len(encode_sft_example(tokenizer, messages, reasoning, ranking, CFG, max_length=length).input_ids) == length


def test_collate_left_pads_and_masks() -> None:
    examples = [
        EncodedExample([5, 6, 7], [0.0, 0.5, 1.0], [PROMPT, REASONING, ANSWER]),
        EncodedExample([8, 9], [0.0, 1.0], [PROMPT, ANSWER]),
    ]
    batch = collate(examples, pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [1, 8, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    assert batch["loss_weights"].tolist() == [[0.0, 0.5, 1.0], [0.0, 0.0, 1.0]]
    assert batch["segments"].tolist() == [[PROMPT, REASONING, ANSWER], [PROMPT, PROMPT, ANSWER]]
    assert batch[TOKENS_KEY].tolist() == [2, 1]
    assert batch[LOSS_WEIGHT_KEY].tolist() == [1.5, 1.0]


class _FixedLogits(nn.Module):
    """Returns the same logits whatever the input (the last ``logits_to_keep`` positions, as HF
    models do): the loss can then be worked out by hand."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, logits_to_keep: int = 0) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits[:, -logits_to_keep:])


def test_weighted_loss_matches_hand_computation() -> None:
    # Vocabulary of 3; row 0 = [prompt 0, reasoning 2], row 1 = [prompt 1, answer 0].
    batch = collate(
        [EncodedExample([0, 2], [0.0, 0.5], [PROMPT, REASONING]), EncodedExample([1, 0], [0.0, 2.0], [PROMPT, ANSWER])],
        pad_id=0,
    )
    logits = torch.zeros(2, 2, 3)
    logits[0, 0] = torch.tensor([0.0, 0.0, math.log(2.0)])  # P(2) = 2/4
    logits[1, 0] = torch.tensor([math.log(3.0), 0.0, 0.0])  # P(0) = 3/5
    loss, extras = weighted_lm_loss(_FixedLogits(logits), batch)
    nll_reasoning, nll_answer = -math.log(0.5), -math.log(0.6)
    assert loss.item() == pytest.approx((0.5 * nll_reasoning + 2.0 * nll_answer) / 2.5)
    assert extras["reasoning_loss"].item() == pytest.approx(nll_reasoning)
    assert extras["answer_loss"].item() == pytest.approx(nll_answer)


def test_a_few_training_steps_lower_the_loss(tokenizer, catalog, tmp_path: Path, monkeypatch) -> None:
    # fp32 on the CPU whatever the machine, as the loop's own tests do.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    examples = [encode_sft_example(tokenizer, *make_example(catalog, s), CFG, max_length=512) for s in range(8)]
    cfg = TrainingConfig(
        learning_rate=3e-3, warmup_steps=2, max_steps=25, batch_size=4, checkpoint_every=25, log_every=1
    )

    def batches(index: int) -> dict[str, Tensor]:
        rows = batch_indices(len(examples), cfg.batch_size, index, cfg.seed)
        return collate([examples[row] for row in rows.tolist()], tokenizer.pad_token_id)

    model = build_model(ModelConfig(preset="tiny", max_length=512), tokenizer)
    seen: list[dict[str, float]] = []
    train(model, batches, weighted_lm_loss, cfg, tmp_path, on_metrics=lambda step, metrics: seen.append(metrics))
    assert {"reasoning_loss", "answer_loss"} <= seen[0].keys()
    assert seen[-1]["loss"] < 0.5 * seen[0]["loss"]


def test_length_sorted_micro_batches_keep_each_steps_examples_and_gradient(tokenizer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    generator = torch.Generator().manual_seed(0)
    lengths = [10 + (7 * k) % 23 for k in range(16)]
    examples = [
        EncodedExample(
            input_ids=torch.randint(5, len(tokenizer), (n,), generator=generator).tolist(),
            loss_weights=[0.0] * (n - 6) + [0.5] * 3 + [1.0] * 3,
            segments=[PROMPT] * (n - 6) + [REASONING] * 3 + [ANSWER] * 3,
        )
        for n in lengths
    ]
    one_batch = TrainingConfig(learning_rate=1e-3, warmup_steps=0, max_steps=3, batch_size=8, checkpoint_every=10, log_every=1)
    four_micro = one_batch.model_copy(update={"batch_size": 2, "grad_accum_steps": 4})
    for step in range(3):
        micro = [length_sorted_micro_batch(lengths, four_micro, step * 4 + m) for m in range(4)]
        rows = [row for batch in micro for row in batch]
        # The step's examples, each once; shortest first; less padding than one batch of 8.
        assert sorted(rows) == sorted(batch_indices(len(examples), 8, step, one_batch.seed).tolist())
        assert [lengths[row] for row in rows] == sorted(lengths[row] for row in rows)
        assert sum(2 * max(lengths[row] for row in batch) for batch in micro) < 8 * max(lengths[row] for row in rows)

    def batches(rows_of):
        return lambda index: collate([examples[row] for row in rows_of(index)], tokenizer.pad_token_id)

    model = build_model(ModelConfig(preset="tiny", max_length=128), tokenizer)
    split_model = build_model(ModelConfig(preset="tiny", max_length=128), tokenizer)
    split_model.load_state_dict(model.state_dict())
    train(model, batches(lambda i: batch_indices(len(examples), 8, i, one_batch.seed).tolist()), weighted_lm_loss, one_batch, tmp_path / "one")
    train(split_model, batches(lambda i: length_sorted_micro_batch(lengths, four_micro, i)), weighted_lm_loss, four_micro, tmp_path / "four")
    for name, value in model.state_dict().items():
        assert torch.allclose(split_model.state_dict()[name], value, atol=2e-5), name


def test_loss_skips_leading_prompt_positions_without_changing_the_value(tokenizer, catalog) -> None:
    """Logits are computed only from the first scored position on; the loss equals the full one."""
    from components.config import ModelConfig
    from components.modeling import build_model

    model = build_model(ModelConfig(max_length=1024), tokenizer, seed=0)
    # Prompts of different lengths, so rows start their answers at different positions.
    examples = [
        encode_sft_example(tokenizer, *make_example(catalog, start), CFG, max_length=512) for start in range(3)
    ]
    examples[1] = encode_sft_example(tokenizer, messages_with_longer_prompt(catalog), "short", catalog.sids(["i1", "i2"]), CFG, 512)
    batch = collate(examples, tokenizer.pad_token_id)
    loss, extras = weighted_lm_loss(model, batch)

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    weights = batch["loss_weights"][:, 1:]
    assert loss.item() == pytest.approx(((nll * weights).sum() / weights.sum()).item(), rel=1e-5)


def test_padding_does_not_change_a_rows_loss(tokenizer, catalog) -> None:
    """The batch loss is the weighted mean of what each example scores alone, unpadded."""
    from components.config import ModelConfig
    from components.modeling import build_model

    model = build_model(ModelConfig(max_length=1024), tokenizer, seed=0)
    examples = [encode_sft_example(tokenizer, *make_example(catalog, start), CFG, max_length=512) for start in range(2)]
    examples.append(encode_sft_example(tokenizer, messages_with_longer_prompt(catalog), "short", catalog.sids(["i1", "i2"]), CFG, 512))
    loss, _ = weighted_lm_loss(model, collate(examples, tokenizer.pad_token_id))
    alone = [weighted_lm_loss(model, collate([example], tokenizer.pad_token_id))[0] for example in examples]
    weights = [sum(example.loss_weights) for example in examples]
    expected = sum(w * row_loss.item() for w, row_loss in zip(weights, alone)) / sum(weights)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
