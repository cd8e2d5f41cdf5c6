"""Greedy decode throughput of our batched decoder against transformers' own ``generate``.

    python benchmarks/ar_decode.py [--device cuda]

Builds the re-ranker's tokenizer (byte-level BPE plus SID tokens) and a random-weight model of
each preset, then decodes re-ranking prompts of about --prompt-tokens tokens, --new-tokens new
tokens each, with (a) ``components.decoding.generate`` and (b) ``model.generate`` (dynamic cache,
greedy, the same left-padded batch with its attention mask). Random weights rarely emit a stop
token, but to be sure both decoders produce exactly --new-tokens tokens per sequence, ours gets no
stop tokens and transformers gets no eos. Each timed call covers tokenization, prefill and decode;
after one warm-up call (which also compiles, on CUDA) the median of --repeats calls is reported as
generated tokens per second. Ours runs with its defaults: a dynamic cache on CPU; a static cache
and compiled one-token steps on CUDA.
Writes benchmarks/results/ar_decode.md with the machine, date and library versions.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig
from components.decoding import generate
from components.modeling import PRESETS, build_model, build_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "ar_decode.md"
LEVELS = "abcd"
CODES = 256
SID_TOKENS = [f"<s_{level}_{code}>" for level in LEVELS for code in range(CODES)]
# The BPE's target size; the benchmark's small corpus stops short of it.
BPE_VOCAB = 4000
PRODUCTS = [
    "nail polish", "gel top coat", "shampoo", "conditioner", "hair mask", "mascara", "eyeliner",
    "lip balm", "eau de parfum", "body lotion", "face cream", "sunscreen SPF 50", "cleansing foam",
    "serum with vitamin C", "dry shampoo", "makeup brush set", "cuticle oil", "hand cream",
]
BRANDS = ["OPI", "Essie", "L'Oreal", "Maybelline", "Nivea", "Neutrogena", "Olay", "Revlon", "Garnier"]


def _sid(rng: random.Random) -> str:
    return "".join(f"<s_{level}_{rng.randrange(CODES)}>" for level in LEVELS)


def _item(rng: random.Random) -> str:
    return f"{rng.choice(BRANDS)} {rng.choice(PRODUCTS)} {_sid(rng)}"


def _prompt_content(rng: random.Random, history: int, candidates: int) -> str:
    lines = ["The user bought these items, oldest first:"]
    lines += [f"{i + 1}. {_item(rng)}, rated {rng.randint(1, 5)} stars" for i in range(history)]
    lines.append("Candidates:")
    lines += [f"- {_item(rng)}" for _ in range(candidates)]
    lines.append('Rank the candidates for this user. Answer with {"reasoning": ..., "ranking": [...]}.')
    return "\n".join(lines)


def _corpus(rng: random.Random) -> list[str]:
    """Item text and prompt templates for BPE, like the text the re-ranker's tokenizer is trained on."""
    return [_prompt_content(rng, history=8, candidates=10) for _ in range(200)]


def _prompts(tokenizer: PreTrainedTokenizerBase, count: int, target_tokens: int, rng: random.Random) -> list[str]:
    """``count`` chat prompts of about ``target_tokens`` tokens, of different lengths (left padding)."""
    prompts = []
    for i in range(count):
        history, candidates = 1, 5
        while True:
            content = _prompt_content(random.Random(rng.random()), history, candidates)
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
            # Lengths spread over about 85-100% of the target, as in a real batch.
            length = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
            if length >= target_tokens * (0.85 + 0.15 * i / max(count - 1, 1)):
                break
            history += 1
        prompts.append(rendered)
    return prompts


def _ours(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], new_tokens: int) -> int:
    result = generate(model, tokenizer, prompts, new_tokens, stop_token_ids=[], batch_size=len(prompts))
    return result.output_tokens


def _transformers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], new_tokens: int
) -> int:
    batch = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    batch = batch.to(model.device)
    with torch.inference_mode():
        out = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        ).cpu()  # waits for the device, as ours does when it reads back its tokens
    return (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]


def _tokens_per_s(decoders: list[Callable[[], int]], repeats: int, expected_tokens: int) -> list[float]:
    """Median generated tokens/s of each decoder; the decoders take turns, so a change in machine
    load during the run hits them alike."""
    for decode in decoders:
        decode()  # warm-up: allocator, kernels, lazy imports
    rates: list[list[float]] = [[] for _ in decoders]
    for _ in range(repeats):
        for decode, decoder_rates in zip(decoders, rates, strict=True):
            start = time.perf_counter()
            tokens = decode()
            seconds = time.perf_counter() - start
            if tokens != expected_tokens:
                sys.exit(f"expected {expected_tokens} generated tokens, got {tokens}: an unequal comparison")
            decoder_rates.append(tokens / seconds)
    return [statistics.median(decoder_rates) for decoder_rates in rates]


def _machine(device: torch.device) -> str:
    model_name = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model_name = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    machine = f"{model_name}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    return f"{machine}, {torch.cuda.get_device_name(device)}" if device.type == "cuda" else machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=sorted(PRESETS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads; default: torch's own")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Other processes' load skews CPU timings, so the report records it.
    load_before = os.getloadavg()[0]

    rng = random.Random(0)
    tokenizer = build_tokenizer(_corpus(rng), SID_TOKENS, vocab_size=BPE_VOCAB)
    all_prompts = _prompts(tokenizer, max(args.batch_sizes), args.prompt_tokens, rng)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in all_prompts]
    rows = []
    for preset in args.presets:
        config = ModelConfig(preset=preset, max_length=max(lengths) + args.new_tokens)
        model = build_model(config, tokenizer, seed=0).eval().to(device)
        parameters = sum(p.numel() for p in model.parameters())
        for batch_size in args.batch_sizes:
            # Spread over the length range, so a small batch is not just the shortest prompts.
            prompts = all_prompts[:: max(len(all_prompts) // batch_size, 1)][:batch_size]
            ours, theirs = _tokens_per_s(
                [
                    lambda: _ours(model, tokenizer, prompts, args.new_tokens),
                    lambda: _transformers(model, tokenizer, prompts, args.new_tokens),
                ],
                args.repeats,
                batch_size * args.new_tokens,
            )
            model_name = f"{preset} ({parameters / 1e6:.1f}M)"
            rows.append(f"| {model_name} | {batch_size} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |")
            print(rows[-1], flush=True)

    load_after = os.getloadavg()[0]
    command = "python benchmarks/ar_decode.py " + " ".join(sys.argv[1:])
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    report = (
        "# Greedy AR decode throughput: `components.decoding.generate` vs transformers' `generate`\n\n"
        f"Command: `{command.strip()}`; {date}; {_machine(device)}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}; 1-minute load average "
        f"{load_before:.2f} at the start, {load_after:.2f} at the end.\n\n"
        f"Random-weight models, vocabulary {len(tokenizer)} tokens ({len(SID_TOKENS)} SID tokens), "
        f"prompts of {min(lengths)}-{max(lengths)} tokens, left-padded in a batch, {args.new_tokens} new tokens "
        "per sequence (no stop token can fire), greedy. Generated tokens per second of wall-clock time, "
        f"tokenization and prefill included; median of {args.repeats} calls after a warm-up call. "
        "Ours: `components.decoding.generate` with its defaults for the device; transformers: "
        "`model.generate` with its default dynamic cache, `do_sample=False`.\n\n"
        "| model | batch | ours tok/s | transformers tok/s | ours / transformers |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    RESULTS.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
