"""A byte-level BPE tokenizer trained on the dataset's own text, with SID and chat tokens.

Byte-level BPE (GPT-2's scheme) encodes any string, so nothing is ever unknown and decoding gives
back the exact input. Every SID token (``<s_a_97>``), the chat role markers, the end-of-text, pad
and diffusion mask tokens are added tokens: each is one id, matched before BPE runs, so it never
merges with its neighbours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizer, PreTrainedTokenizerFast

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Reserved for the block-diffusion stage, which replaces hidden response tokens with it.
MASK_TOKEN = "<|mask|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, IM_START, IM_END, MASK_TOKEN]

# Qwen's chat format: each message is ``<|im_start|>role\ncontent<|im_end|>\n``; the generation
# prompt opens an assistant message for the model to complete.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '" + IM_START + "assistant\\n' }}{%- endif %}"
)


def _without_reserved(texts: Iterable[str], reserved: list[str]) -> Iterator[str]:
    """The texts cut at every reserved token, so BPE never learns merges across or inside them."""
    # Longest first, so a token that is a prefix of another cannot shadow it.
    pattern = re.compile("|".join(re.escape(token) for token in sorted(reserved, key=len, reverse=True)))
    for text in texts:
        yield from (piece for piece in pattern.split(text) if piece)


def sid_added_tokens(sid_tokens: list[str]) -> list[AddedToken]:
    """SID tokens as added tokens that are matched verbatim and never split.

    They are not marked special: ``decode(..., skip_special_tokens=True)`` must keep them, since
    the ranking in an answer is written in SIDs.
    """
    return [AddedToken(token, special=False, normalized=False) for token in sid_tokens]


def build_tokenizer(texts: Iterable[str], sid_tokens: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and add the SID, chat, eos, pad and mask tokens.

    Args:
        texts: the training text: item text plus prompt and trace templates (SID tokens in it are
            cut out before training).
        sid_tokens: every SID token, e.g. from ``components.semantic_ids.format.all_sid_tokens``.
        vocab_size: target size of the learned BPE vocabulary (the 256 bytes included), before the
            special and SID tokens are added; a small corpus may stop short of it.

    Returns:
        A fast tokenizer with a Qwen-style chat template; the same inputs give the same tokenizer.
    """
    bpe = Tokenizer(models.BPE())
    # No prefix space: a prompt's first word and a word after a newline are tokenized alike anyway.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        # The special tokens take the first ids; counting them keeps the learned part at vocab_size.
        vocab_size=vocab_size + len(SPECIAL_TOKENS),
        special_tokens=[AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS],
        # All 256 bytes, so text never seen in training still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_without_reserved(texts, SPECIAL_TOKENS + sid_tokens), trainer=trainer)
    bpe.add_tokens(sid_added_tokens(sid_tokens))

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        extra_special_tokens=[IM_START, IM_END],
        # Decoding must give back the exact text, spaces before punctuation included.
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def add_reranker_tokens(tokenizer: PreTrainedTokenizer | PreTrainedTokenizerFast, sid_tokens: list[str]) -> int:
    """Give a pretrained tokenizer what the re-ranker needs that it lacks.

    Adds the SID tokens and the mask token; a pad token (the eos token, when there is one) and the
    Qwen chat format when the tokenizer has no chat template.

    Args:
        tokenizer: a Hugging Face tokenizer, changed in place.
        sid_tokens: every SID token.

    Returns:
        How many tokens were added.
    """
    added = tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if tokenizer.chat_template is None:
        added += tokenizer.add_special_tokens(
            {"extra_special_tokens": [IM_START, IM_END]}, replace_extra_special_tokens=False
        )
        tokenizer.chat_template = CHAT_TEMPLATE
    return added + tokenizer.add_tokens(sid_added_tokens(sid_tokens))
