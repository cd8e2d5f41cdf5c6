"""Decode speed of the block-diffusion model against its AR teacher, in one process on one device.

The same test prompts are decoded greedily by the AR decoder (teacher), by the block decoder
(student) at every threshold, and by the speculative decoder (student drafts, teacher verifies:
the teacher's output, which the entry checks prompt by prompt), at batch 1 and at batch 16, each at
the model's own output length.
Both decoders use a KV cache; the figures are tokens per second of wall-clock time and the
student's speedup over the AR decoder at the same batch size (research note section 5: compare on
the same device with the same batch).
"""

from __future__ import annotations

from typing import Any

import torch

from components import storage
from components.candidates.examples import read_examples
from components.config import Config
from components.decoding.ar import Generation
from components.decoding.speculative import SpeculativeGeneration
from components.evaluation.stage import evaluation_examples, model_decoder, speculative_decoder
from components.modeling.factory import load_model
from components.prompts.catalog import load_catalog
from components.prompts.render import render_prompts
from components.stage import StageResult, StageSpec, cached_result, publishing

SPEED_STAGE = StageSpec(
    "speed", ("evaluation", "prompts", "candidates"), ("components/evaluation", "components/decoding", "components/modeling", "components/prompts")
)


def _timed(decode: Any, prompts: list[str]) -> tuple[dict[str, float], Generation]:
    generation = decode(prompts)
    entry = {
        "decode_tokens_per_s": round(generation.decode_tokens_per_s, 1),
        "tokens_per_forward": round(generation.tokens_per_forward, 3),
        "mean_output_tokens": round(generation.output_tokens / len(prompts), 1),
        "seconds": round(generation.seconds, 2),
    }
    return entry, generation


def speed_inputs(student_uri: str, teacher_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> dict[str, str]:
    return {"student": student_uri, "teacher": teacher_uri, "dataset": dataset_uri, "sids": sid_uri, "examples": examples_uri}


def compare_speed(
    cfg: Config, student_uri: str, teacher_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str
) -> StageResult:
    """AR vs block decoding speed on the first test prompts.

    Args:
        cfg: run config (``evaluation.thresholds``, ``speed_prompts_batch1/16``, ``max_new_tokens``).
        student_uri: the converted (block-diffusion) model.
        teacher_uri: the AR model it was converted from.
        dataset_uri, sid_uri, examples_uri: the data flow's outputs.

    Returns:
        ``metrics``: per batch size (``"batch_1"``, ``"batch_16"``), ``"ar"``, ``"tau=<t>"`` and
        ``"speculative"`` entries with tokens/s, tokens per forward, mean output tokens and seconds;
        all but AR's also carry ``speedup`` over AR, and the speculative one its mean accepted
        draft length and the share of prompts whose output is the AR decoder's.
    """
    uri = SPEED_STAGE.output_uri(cfg, speed_inputs(student_uri, teacher_uri, dataset_uri, sid_uri, examples_uri))
    if (cached := cached_result(uri, "speed_uri", cfg.storage.work_dir)) is not None:
        return cached
    work_dir = cfg.storage.work_dir
    device = "cuda" if torch.cuda.is_available() else "cpu"
    student, tokenizer, _ = load_model(storage.fetch_dir(student_uri, work_dir))
    teacher, _, _ = load_model(storage.fetch_dir(teacher_uri, work_dir))
    student.to(device)
    teacher.to(device)
    catalog = load_catalog(dataset_uri, sid_uri, work_dir)
    test = evaluation_examples(read_examples(examples_uri, work_dir), cfg)["test"]
    ecfg = cfg.evaluation
    prompts = render_prompts(tokenizer, test.head(max(ecfg.speed_prompts_batch1, ecfg.speed_prompts_batch16)), catalog, cfg.prompts)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"}
    for batch_size, count in ((1, ecfg.speed_prompts_batch1), (16, ecfg.speed_prompts_batch16)):
        batch_prompts = prompts[:count]
        # A warm-up batch so that one-off costs (allocations, kernel selection) are not timed.
        model_decoder(teacher, tokenizer, cfg, batch_size=batch_size)(batch_prompts[:batch_size])
        ar_entry, ar_generation = _timed(model_decoder(teacher, tokenizer, cfg, batch_size=batch_size), batch_prompts)
        entries = {"ar": ar_entry}
        decoders = {f"tau={tau}": model_decoder(student, tokenizer, cfg, tau, batch_size=batch_size) for tau in ecfg.thresholds}
        decoders["speculative"] = speculative_decoder(teacher, student, tokenizer, cfg, batch_size=batch_size)
        for name, decode in decoders.items():
            entry, generation = _timed(decode, batch_prompts)
            entry["speedup"] = round(entry["decode_tokens_per_s"] / max(ar_entry["decode_tokens_per_s"], 1e-9), 3)
            if isinstance(generation, SpeculativeGeneration):
                entry["mean_accepted_length"] = round(generation.mean_accepted_length, 3)
                same = sum(ours == theirs for ours, theirs in zip(generation.token_ids, ar_generation.token_ids, strict=True))
                entry["same_output_as_ar"] = round(same / len(batch_prompts), 4)
            entries[name] = entry
        report[f"batch_{batch_size}"] = entries
    with publishing(uri, work_dir, report):
        pass
    return StageResult({"speed_uri": uri}, report)
