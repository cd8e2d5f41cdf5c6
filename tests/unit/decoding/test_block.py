"""The parallel block decoder: commits respect tau and the commit rule, every block completes, the KV
cache gives what recomputing the whole prefix gives, and a left-padded batch decodes as its rows do
alone."""

from __future__ import annotations

import pytest
import torch

from components.decoding.ar import concatenate
from components.decoding.block import AUTOREGRESSIVE_STEP, generate_blocks
from components.modeling.block_diffusion import block_diffusion_spec, training_layout
from tests.unit.tiny_lm import chat_prompts, tiny_model, tiny_tokenizer

BLOCK = 4
MAX_NEW = 16


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, BLOCK)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return chat_prompts(tokenizer)


def _recomputed_decode(model, prompt_ids: list[int], threshold: float, max_new: int, fold: bool = False, commit_rule: str = "any") -> list[int]:
    """Greedy block decoding with no cache: every step runs the prompt, the committed blocks and the
    current block from scratch under the training layout's mask (clean stream, no views). Folded,
    a block starts wholly masked and its first step commits the first token first."""
    spec = block_diffusion_spec(model)
    b, mask_id = spec.block_size, spec.mask_token_id
    prompt = torch.tensor(prompt_ids)

    def logits_of(response: list[int]) -> torch.Tensor:
        allowed, positions = training_layout(len(prompt), len(response), b, views=0)
        ids = torch.cat([prompt, torch.tensor(response, dtype=torch.long)])[None]
        logits = model(input_ids=ids, attention_mask=allowed[None, None], position_ids=positions[None]).logits[0]
        logits[:, mask_id] = float("-inf")
        return logits

    with torch.no_grad():
        response: list[int] = []
        while len(response) < max_new:
            first = int(logits_of(response)[-1].argmax()) if response else int(
                model(input_ids=prompt[None]).logits[0, -1].masked_fill(torch.arange(model.config.vocab_size) == mask_id, float("-inf")).argmax()
            )
            block = [mask_id] * b if fold else [first] + [mask_id] * (b - 1)
            while mask_id in block:
                probs = logits_of(response + block)[-b - 1 : -1].softmax(-1)  # token shift: row i predicts position i
                confidence, choice = probs.max(-1)
                open_slots = [i for i in range(b) if block[i] == mask_id]
                if commit_rule == "prefix":
                    # The leftmost open slot, then the open slots after it while they reach tau.
                    # (Committed slots between them do not break the run.)
                    chosen = {open_slots[0]}
                    for i in open_slots:
                        if threshold >= 1 or confidence[i] < threshold:
                            break
                        chosen.add(i)
                else:
                    chosen = {i for i in open_slots if confidence[i] >= threshold} if threshold < 1 else set()
                    chosen.add(0 if 0 in open_slots else max(open_slots, key=lambda i: float(confidence[i])))
                for i in chosen:
                    block[i] = int(choice[i])
            if fold:
                assert block[0] == first  # the folded first step commits what the commit forward predicts
            response += block
    return response[:max_new]


@pytest.mark.parametrize("commit_rule", ["any", "prefix"])
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("threshold", [1.0, 0.9, 0.05])
def test_cache_gives_what_recomputing_the_prefix_gives(model, tokenizer, prompts, threshold, fold, commit_rule):
    decoded = generate_blocks(model, tokenizer, prompts[:1], MAX_NEW, threshold=threshold, stop_token_ids=[], fold=fold, commit_rule=commit_rule)
    prompt_ids = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    assert decoded.token_ids[0] == _recomputed_decode(model, prompt_ids, threshold, MAX_NEW, fold, commit_rule)


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("threshold", [0.9, 0.3, 0.02])
def test_prefix_rule_never_commits_right_of_an_open_position(model, tokenizer, prompts, threshold, fold):
    # Under "prefix" a block's commit steps never decrease left to right, and within a step every
    # commit but the leftmost reached tau; "any" breaks the order on the same prompts.
    out = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=threshold, stop_token_ids=[], fold=fold, commit_rule="prefix")
    for log_probs, steps in zip(out.logprobs, out.commit_steps):
        for start in range(0, MAX_NEW, BLOCK):
            block_steps, block_log_probs = steps[start : start + BLOCK], log_probs[start : start + BLOCK]
            assert block_steps == sorted(block_steps)
            for position in range(1, BLOCK):
                if block_steps[position] == block_steps[position - 1]:
                    assert torch.tensor(block_log_probs[position]).exp() >= threshold - 1e-6
    unordered = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=0.3, stop_token_ids=[], commit_rule="any").commit_steps
    assert any(steps[start : start + BLOCK] != sorted(steps[start : start + BLOCK]) for steps in unordered for start in range(0, MAX_NEW, BLOCK))


def test_the_converted_model_carries_its_commit_rule(tokenizer, prompts):
    from components.modeling.block_diffusion import COMMIT_RULE_KEY, convert_to_block_diffusion

    assert block_diffusion_spec(tiny_model(tokenizer, BLOCK)).commit_rule == "prefix"
    converted = convert_to_block_diffusion(tiny_model(tokenizer), tokenizer, BLOCK, commit_rule="any")
    assert block_diffusion_spec(converted).commit_rule == "any"
    # A checkpoint converted before the rule existed decodes as the papers do.
    delattr(converted.config, COMMIT_RULE_KEY)
    assert block_diffusion_spec(converted).commit_rule == "any"
    by_default = generate_blocks(converted, tokenizer, prompts, MAX_NEW, threshold=0.3, stop_token_ids=[])
    assert by_default.token_ids == generate_blocks(converted, tokenizer, prompts, MAX_NEW, threshold=0.3, stop_token_ids=[], commit_rule="any").token_ids
    with pytest.raises(ValueError, match="commit_rule"):
        convert_to_block_diffusion(tiny_model(tokenizer), tokenizer, BLOCK, commit_rule="leftmost")
    with pytest.raises(ValueError, match="commit_rule"):
        generate_blocks(converted, tokenizer, prompts, MAX_NEW, commit_rule="leftmost")


def test_folded_decoding_equals_the_unfolded_decoder_at_tau_one(model, tokenizer, prompts):
    # Same tokens and log-probs (so the same committed K/V under them) in the same forwards; only
    # the first token of each block moves from before the block's steps into its first step.
    unfolded = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=1.0, stop_token_ids=[], fold=False)
    folded = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=1.0, stop_token_ids=[], fold=True)
    assert folded.token_ids == unfolded.token_ids
    for folded_lp, unfolded_lp in zip(folded.logprobs, unfolded.logprobs):
        torch.testing.assert_close(torch.tensor(folded_lp), torch.tensor(unfolded_lp), atol=1e-5, rtol=0)
    assert folded.sequence_forward_passes == unfolded.sequence_forward_passes
    assert folded.forward_passes == unfolded.forward_passes
    for folded_steps, unfolded_steps in zip(folded.commit_steps, unfolded.commit_steps):
        assert folded_steps == [0 if s == AUTOREGRESSIVE_STEP else s + 1 for s in unfolded_steps]


def test_folding_saves_a_forward_per_block_when_steps_commit_several_tokens(model, tokenizer, prompts):
    # At a tau low enough that every step commits the whole rest of its block, an unfolded block
    # costs a step and a commit forward, a folded one only its step (the prefill included).
    unfolded = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=1e-9, stop_token_ids=[], fold=False)
    folded = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=1e-9, stop_token_ids=[], fold=True)
    blocks = MAX_NEW // BLOCK
    assert unfolded.sequence_forward_passes == [1 + blocks + (blocks - 1)] * len(prompts)
    assert folded.sequence_forward_passes == [blocks] * len(prompts)


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("threshold", [0.9, 0.05])
def test_left_padded_batch_decodes_as_single_rows(model, tokenizer, prompts, threshold, fold):
    batch = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=threshold, stop_token_ids=[], fold=fold)
    for i, prompt in enumerate(prompts):
        alone = generate_blocks(model, tokenizer, [prompt], MAX_NEW, threshold=threshold, stop_token_ids=[], fold=fold)
        assert batch.token_ids[i] == alone.token_ids[0]
        assert batch.commit_steps[i] == alone.commit_steps[0]
        assert batch.sequence_forward_passes[i] == alone.sequence_forward_passes[0]


def test_rows_that_finish_early_sit_out_the_forwards_of_the_others(model, tokenizer, prompts):
    # At a low tau rows finish a block in different numbers of steps, and a row that stops leaves
    # the batch: the batch's forwards then cover fewer rows than width x forwards, yet every row
    # decodes what it decodes alone (above). (Under "any" these prompts give the first row a token
    # of its own; the batching does not depend on the rule.)
    free = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=0.05, stop_token_ids=[], commit_rule="any")
    # A token only the first row decodes, after its first block: that row stops while the rest go on.
    stop = next(t for t in free.token_ids[0][BLOCK:] if t not in free.token_ids[0][:BLOCK] and all(t not in row for row in free.token_ids[1:]))
    widths: list[int] = []
    decoder = model.get_decoder()  # every forward (prefill, denoising step, block commit) runs it once
    forward = decoder.forward

    def recording_forward(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    decoder.forward = recording_forward
    try:
        out = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=0.05, stop_token_ids=[stop], commit_rule="any")
    finally:
        del decoder.forward
    assert len(widths) == out.forward_passes and min(widths) < len(prompts)
    assert sum(widths) == sum(out.sequence_forward_passes)  # each row is computed exactly when it counts a forward
    for i, prompt in enumerate(prompts):
        alone = generate_blocks(model, tokenizer, [prompt], MAX_NEW, threshold=0.05, stop_token_ids=[stop], commit_rule="any")
        assert out.token_ids[i] == alone.token_ids[0]


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("threshold", [0.9, 0.3, 0.02])
def test_commits_respect_tau_and_every_block_completes(model, tokenizer, prompts, threshold, fold):
    out = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=threshold, stop_token_ids=[], fold=fold)
    mask_id = block_diffusion_spec(model).mask_token_id
    for ids, log_probs, steps in zip(out.token_ids, out.logprobs, out.commit_steps):
        assert len(ids) == MAX_NEW and mask_id not in ids
        for start in range(0, MAX_NEW, BLOCK):
            block_steps = steps[start : start + BLOCK]
            # Folded, the first token is committed by the block's first step (with others or not).
            assert block_steps[0] == (0 if fold else AUTOREGRESSIVE_STEP)
            assert all(int(fold) <= s < BLOCK - 1 + int(fold) for s in block_steps[1:])
            block_log_probs = log_probs[start : start + BLOCK]
            for step in set(block_steps[1:]):
                committed = [lp for position, (lp, s) in enumerate(zip(block_log_probs, block_steps)) if s == step and position > 0]
                below = [lp for lp in committed if torch.tensor(lp).exp() < threshold - 1e-6]
                if fold and step == 0:
                    assert not below  # the first token is the step's forced commit; the others reached tau
                else:
                    # Either a single (forced) commit, or every commit of the step reached tau.
                    assert len(committed) == 1 or not below


def test_tau_one_commits_one_token_per_step(model, tokenizer, prompts):
    out = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=1.0, stop_token_ids=[])
    for steps, nfe in zip(out.commit_steps, out.sequence_forward_passes):
        for start in range(0, MAX_NEW, BLOCK):
            assert sorted(steps[start + 1 : start + BLOCK]) == list(range(BLOCK - 1))
        blocks = MAX_NEW // BLOCK
        # Prefill, (b - 1) denoising steps per block, a commit forward between blocks.
        assert nfe == 1 + blocks * (BLOCK - 1) + (blocks - 1)
    assert out.tokens_per_forward == pytest.approx(MAX_NEW / (1 + 4 * 3 + 3))


@pytest.mark.parametrize("fold", [False, True])
def test_stop_token_ends_a_sequence(model, tokenizer, prompts, fold):
    free = generate_blocks(model, tokenizer, prompts[:1], MAX_NEW, threshold=0.9, stop_token_ids=[], fold=fold)
    stop = free.token_ids[0][5]
    out = generate_blocks(model, tokenizer, prompts[:1], MAX_NEW, threshold=0.9, stop_token_ids=[stop], fold=fold)
    first_stop = free.token_ids[0].index(stop)
    assert out.token_ids[0] == free.token_ids[0][: first_stop + 1]


def test_block_size_one_and_bad_arguments_are_refused(model, tokenizer, prompts):
    with pytest.raises(ValueError, match="threshold"):
        generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=0.0)
    with pytest.raises(ValueError, match="convert"):
        generate_blocks(tiny_model(tokenizer), tokenizer, prompts, MAX_NEW)


def test_generations_of_consecutive_prompt_lists_concatenate_into_one(model, tokenizer, prompts):
    # The speed comparison decodes batch by batch, decoders taking turns, and reports each whole.
    whole = generate_blocks(model, tokenizer, prompts, MAX_NEW, threshold=0.9, stop_token_ids=[], batch_size=1)
    parts = [generate_blocks(model, tokenizer, [prompt], MAX_NEW, threshold=0.9, stop_token_ids=[], batch_size=1) for prompt in prompts]
    joined = concatenate(parts)
    assert type(joined) is type(whole)
    for field in ("token_ids", "commit_steps", "sequence_forward_passes", "block_token_ids", "block_commit_steps"):
        assert getattr(joined, field) == getattr(whole, field), field
    assert joined.forward_passes == whole.forward_passes == sum(part.forward_passes for part in parts)
    assert joined.seconds == sum(part.seconds for part in parts)
    assert joined.tokens_per_forward == whole.tokens_per_forward
