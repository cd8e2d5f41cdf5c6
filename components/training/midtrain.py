"""SID mid-training examples: teach the model what the new SID tokens mean before SFT.

The item-alignment tasks of paper.md section 3 and candidate recall, written as (prompt, target)
text pairs by ``components.prompts.midtrain``, trained with the loss on the target only. In the SID
answer form an answer is valid only if it lists exactly the candidates' SIDs, and a model trained
from scratch learns to copy multi-token SIDs out of its prompt only after a long plateau (on the tiny preset, about 400 steps of this short task versus no progress in
250 steps of full SFT examples); a pretrained LLM brings that skill, a built-from-scratch one gets
it here. The index answer form (``PromptConfig.answer_ids``) needs no copying.

They are encoded and collated with the SFT machinery (``components.training.sft``), every target
token weighted 1, and trained with ``weighted_lm_loss``.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerBase

from components.prompts.midtrain import TextPair
from components.training.sft import EncodedExample, encode_weighted


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: Iterable[TextPair], max_length: int
) -> list[EncodedExample]:
    """Encode text pairs with weight 1 on the target and its end-of-text token, 0 on the prompt.

    Args:
        tokenizer: a fast tokenizer with an eos token.
        pairs: the pairs to encode.
        max_length: the longest sequence allowed, in tokens.

    Returns:
        One example per pair, ready for ``components.training.sft.collate``.

    Raises:
        ValueError: a pair is longer than ``max_length``.
    """
    return [encode_weighted(tokenizer, pair.prompt, pair.target, tokenizer.eos_token, max_length) for pair in pairs]
