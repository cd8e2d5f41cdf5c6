"""A tokenizer and a tiny random Qwen3 (AR or converted to block diffusion) for decoder and
training tests that need a real model but no data."""

from __future__ import annotations

from components.config import ModelConfig
from components.modeling import build_model, build_tokenizer
from components.modeling.block_diffusion import convert_to_block_diffusion

SID_TOKENS = [f"<s_{level}_{code}>" for level in "abcd" for code in range(8)]
TEXTS = [
    "The history is mostly nail polish with repeat purchases and strong brand loyalty.",
    "Candidates: creams, shampoos, mascara, eau de parfum; rank them for the user.",
] * 5
# Different lengths, so a batch of their prompts is left-padded by different amounts.
CONTENTS = ["Rank <s_a_1><s_b_2><s_c_3><s_d_0> for a nail polish buyer.", "Hi", "History: mascara, creams and shampoos."]


def tiny_tokenizer():
    return build_tokenizer(TEXTS, SID_TOKENS, vocab_size=300)


def tiny_model(tokenizer, block_size: int | None = None, seed: int = 0):
    """A random tiny model in eval mode; converted to block diffusion when ``block_size`` is given."""
    model = build_model(ModelConfig(preset="tiny", max_length=256), tokenizer, seed=seed).eval()
    return model if block_size is None else convert_to_block_diffusion(model, tokenizer, block_size)


def chat_prompts(tokenizer, contents: list[str] = CONTENTS) -> list[str]:
    """One user turn per content, chat template and generation prompt applied."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True) for c in contents]


def publish_checkpoint(uri: str, work_dir: str, seed: int = 0, block_size: int | None = 4) -> str:
    """Publish a tiny model at ``uri`` as a training stage would: checkpoint, metrics and a step history."""
    import json

    from components.modeling.factory import save_model
    from components.stage import publishing

    tokenizer = tiny_tokenizer()
    with publishing(uri, work_dir, {"final_loss": 1.5}) as out:
        save_model(tiny_model(tokenizer, block_size=block_size, seed=seed), tokenizer, out, {"stage": "diffusion_rl"})
        (out / "history.json").write_text(json.dumps([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]))
    return uri
