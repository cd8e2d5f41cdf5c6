"""Build, load and save the re-ranker's causal LM.

Two routes give a stock transformers model, so the block-diffusion conversion works on either:
a Qwen3-architecture model built from a size preset with the dataset's own tokenizer
(``build_model``), or a local pretrained causal LM given the SID and mask tokens
(``load_pretrained``). ``save_model`` writes a ``dgr2_model.json`` beside the weights and the
tokenizer, so a checkpoint says what it is without the config that produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from components.config import ModelConfig
from components.modeling.attention import SDPA_SHARED_KV
from components.modeling.tokenizer import add_reranker_tokens

METADATA_FILE = "dgr2_model.json"
# SDPA takes the hand-built 4D masks of the block-diffusion stage (eager would add a bool mask
# instead of applying it), here without copying shared key/value heads (components.modeling.attention).
ATTN_IMPLEMENTATION = SDPA_SHARED_KV


@dataclass(frozen=True)
class Preset:
    """The size of a built-from-scratch Qwen3 model; the vocabulary comes from the tokenizer."""

    hidden_size: int
    num_layers: int
    num_heads: int
    # Grouped-query attention: half or a third as many KV heads shrinks the KV cache at decode time.
    num_kv_heads: int
    intermediate_size: int


PRESETS: dict[str, Preset] = {
    # About 1.4M parameters with a 5k vocabulary: trains in minutes on 2 CPU cores.
    "tiny": Preset(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384),
    # About 16M parameters with a 5k vocabulary: full data on a GPU.
    "small": Preset(hidden_size=384, num_layers=8, num_heads=6, num_kv_heads=2, intermediate_size=1152),
}


def preset_config(preset: str, vocab_size: int, max_length: int, pad_id: int, eos_id: int) -> Qwen3Config:
    """The Qwen3 config of a size preset.

    Args:
        preset: a key of ``PRESETS``.
        vocab_size: embedding rows, ``len(tokenizer)``.
        max_length: the longest sequence the model must position.
        pad_id: the pad token id.
        eos_id: the end-of-text id; also the bos id, since prompts start with no bos token (Qwen).

    Returns:
        The config, with tied input and output embeddings (at this size the embedding matrix is a
        large share of all parameters) and SDPA attention.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}")
    size = PRESETS[preset]
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        head_dim=size.hidden_size // size.num_heads,
        intermediate_size=size.intermediate_size,
        max_position_embeddings=max_length,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3 causal LM of ``cfg.preset``'s size for ``tokenizer``.

    Args:
        cfg: the model section (preset, max_length).
        tokenizer: the tokenizer the model reads; it sets the vocabulary and the pad/eos ids.
        seed: the initialisation seed; the global torch RNG is left as it was.

    Returns:
        The model in float32, in train mode.
    """
    config = preset_config(cfg.preset, len(tokenizer), cfg.max_length, tokenizer.pad_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    return model.train()


def load_pretrained(base_model_dir: str, sid_tokens: list[str]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A local pretrained causal LM and its tokenizer, extended with the SID and mask tokens.

    Args:
        base_model_dir: a directory holding a transformers causal LM and its tokenizer.
        sid_tokens: every SID token.

    Returns:
        (model, tokenizer); the embeddings have a row for every token of the extended tokenizer,
        new rows initialised to the mean of the old ones.

    Raises:
        FileNotFoundError: ``base_model_dir`` is not a model directory (no ``config.json``).
    """
    model, tokenizer = _read_model_dir(_model_dir(base_model_dir, "config.json"))
    add_reranker_tokens(tokenizer, sid_tokens)
    # Qwen checkpoints keep spare embedding rows past len(tokenizer); never shrink into them.
    model.resize_token_embeddings(max(len(tokenizer), model.get_input_embeddings().num_embeddings))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, metadata: dict[str, Any]
) -> Path:
    """Write the model, its tokenizer and ``dgr2_model.json`` to ``out_dir``.

    Args:
        model: the model to save.
        tokenizer: its tokenizer.
        out_dir: the checkpoint directory, created if needed.
        metadata: JSON-serialisable facts that make the checkpoint self-describing: the resolved
            config, the SID level sizes, the stage that produced it.

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return out


def load_model(model_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load a checkpoint written by ``save_model``.

    Args:
        model_dir: the checkpoint directory.

    Returns:
        (model, tokenizer, metadata), the model in eval mode.

    Raises:
        FileNotFoundError: ``model_dir`` holds no ``dgr2_model.json``.
        CheckpointError: a file of the checkpoint is truncated or corrupt (named in the message).
    """
    path = _model_dir(model_dir, METADATA_FILE)
    try:
        metadata = json.loads((path / METADATA_FILE).read_text())
    except ValueError as exc:
        raise unreadable(path / METADATA_FILE, exc) from None
    model, tokenizer = _read_model_dir(path)
    return model.eval(), tokenizer, metadata


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read: truncated, corrupted or only partly copied."""


def unreadable(file: Path, exc: BaseException) -> CheckpointError:
    """The error for ``file``, which failed to load with ``exc``; says how to get a good one."""
    return CheckpointError(
        f"checkpoint file {file} is unreadable ({exc}); it was truncated or changed after it was written: "
        "remove the stage output that holds it and run the stage again"
    )


def _check_weights(path: Path) -> None:
    """Read every safetensors header: a truncated or corrupted weights file fails here, by name."""
    from safetensors import safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for every defect
            raise unreadable(weights, exc) from None


def _read_model_dir(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer and float32 model from ``path``; a damaged file raises :class:`CheckpointError`."""
    _check_weights(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION
        )
    except (OSError, ValueError) as exc:  # a corrupt config or tokenizer file (JSONDecodeError is a ValueError)
        raise unreadable(path, exc) from None
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters of ``model``; tied embeddings count once."""
    return sum(p.numel() for p in model.parameters())


def _model_dir(model_dir: str | Path, required_file: str) -> Path:
    """``model_dir`` as a Path, after checking that it holds ``required_file``."""
    path = Path(model_dir)
    if not (path / required_file).is_file():
        raise FileNotFoundError(f"{path} is not a model directory: it has no {required_file}")
    return path
