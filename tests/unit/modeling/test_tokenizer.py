from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from components.modeling.tokenizer import (
    EOS_TOKEN,
    IM_END,
    IM_START,
    MASK_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    build_tokenizer,
)
from components.prompts import RANKING_KEY, render_answer

from .conftest import SID_TOKENS


def test_every_sid_and_special_token_is_one_id(tokenizer):
    for token in SID_TOKENS + SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(token)], token
    assert len(set(tokenizer.convert_tokens_to_ids(SID_TOKENS + SPECIAL_TOKENS))) == len(SID_TOKENS + SPECIAL_TOKENS)


def test_reserved_tokens_never_merge_with_neighbours(tokenizer):
    ids = tokenizer("x<s_a_97><s_b_3>Nail Polish<|mask|>,", add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[1:3] == ["<s_a_97>", "<s_b_3>"]
    assert MASK_TOKEN in tokens


def test_special_token_roles(tokenizer):
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.mask_token == MASK_TOKEN
    assert len({tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id}) == 3


def test_rendered_prompt_and_answer_round_trip_exactly(tokenizer, examples):
    messages, answer = examples[0]
    text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
    # Unseen and non-ASCII text must survive too: byte-level BPE has no unknown token.
    for sample in (text, "Crème brûlée – 香水 🌸  double  spaces\n\tand a tab"):
        ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == sample


def test_sids_survive_skip_special_tokens(tokenizer, examples):
    _, answer = examples[0]
    ids = tokenizer(answer + IM_END, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == answer


def test_answer_tokenizes_compactly(tokenizer, examples):
    messages, answer = examples[0]
    ranking = json.loads(answer)[RANKING_KEY]
    ranking_ids = tokenizer(render_answer("", ranking), add_special_tokens=False)["input_ids"]
    sid_ids = set(tokenizer.convert_tokens_to_ids(SID_TOKENS))
    # Ten 4-level SIDs, one id each; the JSON around them is a handful of ids, one per separator.
    assert sum(i in sid_ids for i in ranking_ids) == 40
    assert len(ranking_ids) <= 40 + len(ranking) + 8
    # The whole example: the 30 item lines of the prompt dominate (4 SID ids plus the category).
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert len(prompt_ids) + len(answer_ids) < 500


def test_chat_template_gives_qwen_format(tokenizer):
    messages = [{"role": "system", "content": "Rank."}, {"role": "user", "content": "<s_a_1> Mascara"}]
    expected = f"{IM_START}system\nRank.{IM_END}\n{IM_START}user\n<s_a_1> Mascara{IM_END}\n"
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt == expected + f"{IM_START}assistant\n"


def test_save_and_load_round_trip(tokenizer, examples, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    messages, answer = examples[1]
    assert len(loaded) == len(tokenizer)
    assert loaded.apply_chat_template(messages, add_generation_prompt=True) == tokenizer.apply_chat_template(
        messages, add_generation_prompt=True
    )
    assert loaded(answer)["input_ids"] == tokenizer(answer)["input_ids"]
    assert (loaded.eos_token, loaded.pad_token, loaded.mask_token) == (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)


def test_same_inputs_give_the_same_tokenizer(tokenizer, examples):
    texts = [m["content"] for messages, _ in examples for m in messages] + [answer for _, answer in examples]
    again = build_tokenizer(texts, SID_TOKENS, vocab_size=4000)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


@pytest.mark.parametrize("vocab_size", [300, 400])
def test_vocab_size_bounds_the_learned_vocabulary(examples, vocab_size):
    texts = [answer for _, answer in examples]
    small = build_tokenizer(texts, SID_TOKENS, vocab_size=vocab_size)
    assert len(small) == vocab_size + len(SPECIAL_TOKENS) + len(SID_TOKENS)
