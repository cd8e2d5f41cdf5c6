"""Where one AR step's and one block step's time goes, on the latest recipe run's models.

    python benchmarks/decode_profile.py [--config configs/tiny.yaml] [--tau 0.9] [--label after] [--attention sdpa]

Decodes the first test prompts greedily with the AR teacher (``components.decoding.generate``),
with the final block-diffusion student (``generate_blocks`` at ``--tau``, unfolded and, when the
student was trained for it, folded) and with the speculative decoder (student drafts, teacher
verifies; its output is checked against the AR decoder's), at batch 1 and 16, and
splits each call's wall time into: the model forward (decoder and output projection, without
its KV-cache writes), the KV cache
(writes, crops), attention-mask construction, token selection, and the rest (Python and small
tensor ops in the step loop). The split comes from timers wrapped around those functions, so
the decoders run unchanged. Reports milliseconds per forward pass: a block step costs what its
row says against the AR row at the same batch size. Appends a section to
benchmarks/results/decode_profile.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers.cache_utils import DynamicCache, DynamicLayer, StaticLayer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_run import REPO_ROOT, append_record, current_commit  # noqa: E402
from components.decoding import ar, block, speculative  # noqa: E402
from components.decoding.cache import InPlaceLayer  # noqa: E402
from components.modeling.factory import ATTN_IMPLEMENTATION  # noqa: E402
from recipe_models import latest_recipe_models  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "decode_profile.md"
PARTS = ("model forward", "KV cache", "attention mask", "token selection", "rest of the step loop")


class Timers:
    """Seconds per part; nested timers are subtracted from the part they run inside."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []

    def wrap(self, part: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([0.0])
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                inner = self._stack.pop()[0]
                self.seconds[part] += elapsed - inner
                if self._stack:
                    self._stack[-1][0] += elapsed

        return timed


@contextmanager
def instrumented(timers: Timers, models: list[torch.nn.Module]) -> Iterator[None]:
    """Timers around the model forwards, cache writes and crops, mask building and token choice."""
    patches = [(layer, "update", "KV cache") for layer in (DynamicLayer, StaticLayer, InPlaceLayer)] + [
        (DynamicCache, "crop", "KV cache"),
        (block, "block_step_mask", "attention mask"),
        (block, "fold_step_mask", "attention mask"),
        (speculative, "block_step_mask", "attention mask"),
        (speculative, "fold_step_mask", "attention mask"),
        (ar, "choose_tokens", "token selection"),
        (block, "choose_tokens", "token selection"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, part in patches:
        setattr(owner, name, timers.wrap(part, getattr(owner, name)))
    # The block decoder's denoising steps run the decoder and the output projection directly.
    modules = [part for model in models for part in (model, model.get_decoder(), model.get_output_embeddings())]
    for module in modules:
        module.forward = timers.wrap("model forward", module.forward)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        for module in modules:
            del module.forward


def _profile(decode: Callable[[list[str]], Any], prompts: list[str], models: list[torch.nn.Module]) -> dict[str, Any]:
    decode(prompts[:1])  # warm-up
    timers = Timers()
    with instrumented(timers, models):
        started = time.perf_counter()
        generation = decode(prompts)
        total = time.perf_counter() - started
    forwards = generation.forward_passes
    row = {part: 1000 * timers.seconds[part] / forwards for part in PARTS[:-1]}
    row[PARTS[-1]] = 1000 * (total - sum(timers.seconds.values())) / forwards
    return {
        "ms": row,
        "ms_per_forward": 1000 * total / forwards,
        "forwards": forwards,
        "tokens_per_forward": generation.tokens_per_forward,
        "tokens_per_s": generation.output_tokens / total,
        "token_ids": generation.token_ids,
        "accepted": getattr(generation, "mean_accepted_length", None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--tau", type=float, default=0.9)
    parser.add_argument("--prompts", type=int, default=32, help="prompts per batch size (batch 1 decodes a quarter of them)")
    parser.add_argument("--label", default="", help="a name for this section of the results file")
    parser.add_argument("--draft-steps", type=int, default=1, help="student forwards per speculative draft")
    parser.add_argument(
        "--attention", default=ATTN_IMPLEMENTATION, help="the models' attention implementation (sdpa: transformers' stock one, for comparison)"
    )
    args = parser.parse_args()
    models = latest_recipe_models(args.config, args.prompts)
    teacher, student, tokenizer, prompts = models.teacher, models.student, models.tokenizer, models.prompts
    for model in (teacher, student):
        model.set_attn_implementation(args.attention)
    new_tokens = models.cfg.evaluation.max_new_tokens

    folds = [False, True] if student.config.to_dict().get("bd_fold_commits") else [False]
    rows = []
    for batch_size, count in ((1, max(1, args.prompts // 4)), (16, args.prompts)):
        rows.append(
            (batch_size, "AR step", _profile(lambda p: ar.generate(teacher, tokenizer, p, new_tokens, batch_size=batch_size), prompts[:count], [teacher]))
        )
        for fold in folds:
            block_row = _profile(
                lambda p: block.generate_blocks(student, tokenizer, p, new_tokens, threshold=args.tau, batch_size=batch_size, fold=fold),
                prompts[:count],
                [student],
            )
            rows.append((batch_size, f"block step, tau {args.tau}{', folded' if fold else ''}", block_row))
        rows.append(
            (
                batch_size,
                f"speculative, {args.draft_steps} draft step(s)",
                _profile(
                    lambda p: speculative.generate_speculative(
                        teacher, student, tokenizer, p, new_tokens, draft_steps=args.draft_steps, batch_size=batch_size
                    ),
                    prompts[:count],
                    [teacher, student],
                ),
            )
        )

    header = "| batch | step | " + " | ".join(f"{part} ms" for part in PARTS) + " | ms per forward | forwards | tokens per forward | tokens/s |"
    lines = [
        f"\n## {args.label or 'profile'}: {datetime.now(timezone.utc).date()}, commit {current_commit()}\n",
        f"Command: `python benchmarks/decode_profile.py --config {args.config} --tau {args.tau} --draft-steps {args.draft_steps} --attention {args.attention}`; {platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"block size {student.config.bd_block_size}, max new tokens {new_tokens}; milliseconds per forward pass.\n",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for batch_size, name, row in rows:
        parts = " | ".join(f"{row['ms'][part]:.2f}" for part in PARTS)
        lines.append(
            f"| {batch_size} | {name} | {parts} | {row['ms_per_forward']:.2f} | {row['forwards']} | {row['tokens_per_forward']:.2f} | {row['tokens_per_s']:,.0f} |"
        )
    for batch_size in (1, 16):
        ar_row, *others = (row for b, _, row in rows if b == batch_size)
        names = [name for b, name, _ in rows if b == batch_size][1:]
        for name, row in zip(names, others):
            note = ""
            if row["accepted"] is not None:
                same = sum(a == b for a, b in zip(row["token_ids"], ar_row["token_ids"]))
                note = f"; {row['accepted']:.2f} drafted tokens accepted per check, output = AR's on {same} of {len(ar_row['token_ids'])} prompts"
            lines.append(
                f"\nBatch {batch_size}, {name}: a forward costs {row['ms_per_forward'] / ar_row['ms_per_forward']:.2f} AR steps; "
                f"{row['tokens_per_s'] / ar_row['tokens_per_s']:.2f}x AR{note}."
            )
    text = "\n".join(lines) + "\n"
    print(text)
    append_record(RESULTS, "# Where a decoding step's time goes: AR teacher against block-diffusion student\n", text)


if __name__ == "__main__":
    main()
