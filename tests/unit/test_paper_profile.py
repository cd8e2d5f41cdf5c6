"""configs/paper-8b.yaml: the papers' hyperparameters come through the schema, and the pretrained
route works end to end on a tiny Qwen3 stand-in for the 8B checkpoint (load, add SID and mask
tokens, convert to block diffusion at the profile's block size, one CFT loss and backward)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from components.config import Config, load_config
from components.modeling.block_diffusion import block_diffusion_spec, convert_to_block_diffusion
from components.modeling.factory import load_pretrained
from components.modeling.tokenizer import IM_END, MASK_TOKEN
from components.prompts import CatalogItem, ItemCatalog, render_messages
from components.semantic_ids.format import all_sid_tokens, sid_string
from components.training.cft import cft_loss_fn, complementary_mask, complementary_views, diffusion_example, pack_batch
from components.training.sft import encode_sft_example

PROFILE = Path(__file__).resolve().parents[2] / "configs" / "paper-8b.yaml"
# The profile's torchrun command line: --nproc_per_node=8.
PAPER_GPUS = 8
CATEGORIES = [("Makeup", "Nails", "Nail Polish"), ("Skin Care", "Face", "Creams"), ("Hair Care", "Shampoos")]


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(PROFILE)


def test_profile_holds_only_values_that_differ_from_the_defaults() -> None:
    tree = yaml.safe_load(PROFILE.read_text())
    defaults = Config().model_dump()
    deltas = {(section, key) for section, values in tree.items() if isinstance(values, dict) for key in values}
    assert deltas and all(tree[s][k] != defaults[s][k] for s, k in deltas), [f"{s}.{k}" for s, k in deltas if tree[s][k] == defaults[s][k]]


def test_paper_hyperparameters_come_through(cfg: Config) -> None:
    assert cfg.profile == "paper-8b" and cfg.model.base_model == "checkpoints/Qwen3-8B"
    assert cfg.diffusion.block_size == 32
    assert (cfg.sft.lambda_reasoning, cfg.sft.lambda_answer) == (0.1, 1.0)
    assert cfg.cft.training(cfg.training).learning_rate == 1e-5
    assert cfg.rl.training(cfg.training).learning_rate == 1e-6
    opd = cfg.opd.training(cfg.training)
    assert (opd.learning_rate, opd.schedule, opd.warmup_steps, opd.max_steps) == (1e-6, "constant", 0, 350)
    assert opd.batch_size * opd.grad_accum_steps == 128 and cfg.opd.samples_per_prompt == 4
    rl = cfg.diffusion_rl.training(cfg.training)
    assert (rl.learning_rate, rl.schedule, rl.warmup_steps, rl.max_steps) == (5e-7, "constant", 0, 600)
    d = cfg.diffusion_rl
    assert (d.group_size, d.clip_low, d.clip_high, d.format_weight, d.invalid_reward) == (8, 0.2, 0.2, 0.2, -1.0)
    assert cfg.evaluation.thresholds == [1.0, 0.9, 0.6, 0.4]
    assert (cfg.evaluation.test_users, cfg.candidates.test_sample_size) == ("sample", 1615)


def test_every_stage_batch_splits_evenly_over_the_profiles_ranks(cfg: Config) -> None:
    # The loop gives each DDP rank an equal slice of every micro-batch and refuses a remainder.
    for name in ("midtrain", "sft", "rl", "cft", "opd", "diffusion_rl"):
        assert getattr(cfg, name).training(cfg.training).batch_size % PAPER_GPUS == 0, name


def _catalog() -> ItemCatalog:
    return ItemCatalog(
        CatalogItem(f"i{k}", sid_string([k, 2 * k, 3 * k, 0]), f"Item {k}", "Brand", CATEGORIES[k % 3]) for k in range(8)
    )


def _save_stand_in(out_dir: Path, corpus: list[str]) -> int:
    """A tiny Qwen3 and a byte-level BPE with only an eos token, saved like a hub checkpoint: no
    SID tokens, no <|mask|>, and spare embedding rows past the tokenizer, as Qwen checkpoints have.

    Returns:
        The tokenizer's length.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(out_dir)
    config = Qwen3Config(
        vocab_size=len(tokenizer) + 16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, intermediate_size=64, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out_dir)
    return len(tokenizer)


def test_profile_builds_converts_and_trains_a_pretrained_stand_in(tmp_path: Path) -> None:
    # The profile with its placeholder path replaced, as `--set model.base_model=/path` does.
    cfg = load_config(PROFILE, [f"model.base_model={tmp_path / 'qwen3'}"])
    catalog = _catalog()
    examples = [render_messages([f"i{k}", f"i{k + 1}"], [f"i{(k + j) % 8}" for j in range(2, 6)], catalog, cfg.prompts) for k in range(2)]
    base_vocab = _save_stand_in(Path(cfg.model.base_model), [m["content"] for messages in examples for m in messages])
    sid = cfg.semantic_ids
    levels = sid.quantized_levels + 1
    sid_tokens = all_sid_tokens(levels, [sid.codebook_size] * sid.quantized_levels + [sid.last_level_size])

    model, tokenizer = load_pretrained(cfg.model.base_model, sid_tokens)
    assert len(tokenizer) == base_vocab + len(sid_tokens) + 3  # SIDs, <|mask|>, <|im_start|>, <|im_end|>
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    # fp32 weights; the loop adds bf16 autocast on GPUs (the profile's header).
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model = convert_to_block_diffusion(model, tokenizer, cfg.diffusion.block_size)
    spec = block_diffusion_spec(model)
    assert (spec.block_size, spec.mask_token_id) == (32, tokenizer.convert_tokens_to_ids(MASK_TOKEN))

    end_id = tokenizer.convert_tokens_to_ids(IM_END)
    generator = torch.Generator().manual_seed(0)
    rows, views = [], []
    for k, messages in enumerate(examples):
        ranking = [catalog.item(f"i{(k + j) % 8}").sid for j in (5, 4, 3, 2)]
        encoded = encode_sft_example(tokenizer, messages, "Nail polish buyer, polish first", ranking, cfg.sft, cfg.model.max_length)
        rows.append(diffusion_example(encoded, spec.block_size, end_id))
        masked = complementary_mask(len(rows[-1].response_ids), spec.block_size, cfg.cft.mask_eps, generator)
        views.append(complementary_views(masked, spec.block_size))
    batch = pack_batch(rows, views, spec, tokenizer.pad_token_id)
    response_width = batch["targets"].shape[1]
    assert response_width % 32 == 0
    width = batch["input_ids"].shape[1]
    assert width == int(batch["prompt_width"]) + 3 * response_width  # prompt | view 1 | view 2 | clean

    model.train()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits
    assert logits.shape == (2, width, model.config.vocab_size)
    # The CFT loss in the precision the loop trains in on GPUs (bf16 autocast; CPU autocast here).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, extras = cft_loss_fn(spec.mask_token_id)(model, batch)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and set(extras) == {"reasoning_loss", "answer_loss"}
    gradient = model.get_input_embeddings().weight.grad
    assert gradient is not None and gradient.dtype == torch.float32 and torch.isfinite(gradient).all()
