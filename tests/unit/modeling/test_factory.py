from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from components.config import ModelConfig
from components.modeling.attention import SDPA_SHARED_KV
from components.modeling.factory import (
    METADATA_FILE,
    CheckpointError,
    build_model,
    count_parameters,
    load_model,
    load_pretrained,
    preset_config,
    save_model,
)
from components.modeling.tokenizer import IM_END, IM_START, MASK_TOKEN

from .conftest import SID_SIZES, SID_TOKENS

# The vocabulary at the default sizes: 4,000 BPE tokens, 5 special tokens and 4 x 256 SID tokens.
DEFAULT_VOCAB = 4000 + 5 + sum(SID_SIZES)


@pytest.mark.parametrize(
    ("preset", "low", "high"), [("tiny", 1_000_000, 3_000_000), ("small", 15_000_000, 20_000_000)]
)
def test_preset_sizes(preset, low, high):
    model = Qwen3ForCausalLM(preset_config(preset, DEFAULT_VOCAB, max_length=1024, pad_id=1, eos_id=0))
    assert low <= count_parameters(model) <= high


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="'huge'"):
        preset_config("huge", DEFAULT_VOCAB, max_length=1024, pad_id=1, eos_id=0)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_build_model_forward_shapes(tokenizer, preset):
    cfg = ModelConfig(preset=preset, max_length=256)
    model = build_model(cfg, tokenizer)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.max_position_embeddings >= cfg.max_length
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert model.config._attn_implementation == SDPA_SHARED_KV
    ids = torch.randint(0, len(tokenizer), (2, 7))
    assert model(input_ids=ids).logits.shape == (2, 7, len(tokenizer))


def test_build_model_is_seeded_and_leaves_global_rng_alone(tokenizer):
    cfg = ModelConfig(preset="tiny")
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(cfg, tokenizer)
    assert torch.equal(torch.rand(1), expected_draw)
    second, other_seed = build_model(cfg, tokenizer), build_model(cfg, tokenizer, seed=1)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.model.embed_tokens.weight, other_seed.model.embed_tokens.weight)


def test_save_load_round_trip(tokenizer, tmp_path):
    model = build_model(ModelConfig(preset="tiny"), tokenizer).eval()
    metadata = {"stage": "sft", "sid_level_sizes": SID_SIZES, "model": ModelConfig().model_dump()}
    save_model(model, tokenizer, tmp_path / "ckpt", metadata)
    loaded, loaded_tokenizer, loaded_metadata = load_model(tmp_path / "ckpt")
    assert loaded_metadata == metadata
    assert len(loaded_tokenizer) == len(tokenizer)
    ids = torch.randint(0, len(tokenizer), (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("damaged", ["model.safetensors", "tokenizer.json", METADATA_FILE])
def test_a_truncated_checkpoint_file_is_named_not_a_library_trace(tokenizer, tmp_path, damaged):
    save_model(build_model(ModelConfig(preset="tiny"), tokenizer), tokenizer, tmp_path / "ckpt", {"stage": "sft"})
    file = tmp_path / "ckpt" / damaged
    with open(file, "r+b") as handle:
        handle.truncate(file.stat().st_size // 2)
    with pytest.raises(CheckpointError, match="unreadable") as raised:
        load_model(tmp_path / "ckpt")
    # The weights and metadata files are named; a damaged tokenizer names its checkpoint directory.
    assert str(file if damaged != "tokenizer.json" else tmp_path / "ckpt") in str(raised.value)
    assert "run the stage again" in str(raised.value)


def test_load_model_names_a_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        load_model(tmp_path / "missing")


def _save_base_tokenizer(out_dir) -> PreTrainedTokenizerFast:
    """A plain byte-level BPE with only an eos token: no pad, no mask, no chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["a small base model corpus"] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def test_load_pretrained_gpt2_adds_tokens_and_resizes(tmp_path):
    base = _save_base_tokenizer(tmp_path)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(base), n_layer=1, n_embd=32, n_head=2, n_positions=64)).save_pretrained(
        tmp_path
    )
    model, tokenizer = load_pretrained(str(tmp_path), SID_TOKENS)
    for token in SID_TOKENS + [MASK_TOKEN, IM_START, IM_END]:
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(token)]
    assert len(tokenizer) == len(base) + len(SID_TOKENS) + 3
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token
    messages = [{"role": "user", "content": "<s_a_1>"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == f"{IM_START}user\n<s_a_1>{IM_END}\n"
    ids = tokenizer("<s_a_1><s_b_2><|mask|>", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, 3, len(tokenizer))


def test_load_pretrained_keeps_spare_embedding_rows(tmp_path):
    base = _save_base_tokenizer(tmp_path)
    # Like Qwen checkpoints: more embedding rows than tokens, even after the new tokens are added.
    spare_rows = len(base) + len(SID_TOKENS) + 64
    config = Qwen3Config(
        vocab_size=spare_rows, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, intermediate_size=64,
    )  # fmt: skip
    Qwen3ForCausalLM(config).save_pretrained(tmp_path)
    model, tokenizer = load_pretrained(str(tmp_path), SID_TOKENS)
    assert len(tokenizer) < spare_rows
    assert model.get_input_embeddings().num_embeddings == spare_rows


def test_load_pretrained_names_a_bad_path(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a model directory"):
        load_pretrained(str(tmp_path), SID_TOKENS)


def test_metadata_file_sits_beside_the_weights(tokenizer, tmp_path):
    model = build_model(ModelConfig(preset="tiny"), tokenizer)
    out = save_model(model, tokenizer, tmp_path, {"stage": "pretrain"})
    assert (out / METADATA_FILE).is_file() and (out / "config.json").is_file()
