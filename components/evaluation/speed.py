"""Decode speed of the block-diffusion model against its AR teacher, in one process on one device.

The same test prompts are decoded greedily by the AR decoder (teacher), by the block decoder
(student) at every threshold, and by the speculative decoder (student drafts, teacher verifies:
the teacher's output, which the entry checks prompt by prompt), at batch 1 and at batch 16, each at
the model's own output length. The decoders take turns batch by batch, so each one's time is
spread over the whole measurement.
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
from components.decoding.ar import Generation, concatenate
from components.decoding.speculative import SpeculativeGeneration
from components.evaluation.stage import evaluation_examples, model_decoder, speculative_decoder
from components.modeling.factory import load_model
from components.prompts.catalog import load_catalog
from components.prompts.render import render_prompts
from components.stage import StageResult, StageSpec, cached_result, publishing

SPEED_STAGE = StageSpec(
    "speed", ("evaluation", "prompts", "candidates"), ("components/evaluation", "components/decoding", "components/modeling", "components/prompts")
)


def _entry(generation: Generation, prompts: int) -> dict[str, float]:
    return {
        "decode_tokens_per_s": round(generation.decode_tokens_per_s, 1),
        "tokens_per_forward": round(generation.tokens_per_forward, 3),
        "mean_output_tokens": round(generation.output_tokens / prompts, 1),
        "seconds": round(generation.seconds, 2),
    }


def _interleaved(decoders: dict[str, Any], prompts: list[str], batch_size: int) -> dict[str, Generation]:
    """Every decoder's generation over ``prompts``, decoded one batch at a time with the decoders
    taking turns on each batch: a host that slows down or speeds up part-way (another tenant, clock
    changes) then weighs on every decoder alike instead of on whichever ran in that stretch."""
    parts: dict[str, list[Generation]] = {name: [] for name in decoders}
    for first in range(0, len(prompts), batch_size):
        for name, decode in decoders.items():
            parts[name].append(decode(prompts[first : first + batch_size]))
    return {name: concatenate(generations) for name, generations in parts.items()}


def speed_inputs(student_uri: str, teacher_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> dict[str, str]:
    return {"student": student_uri, "teacher": teacher_uri, "dataset": dataset_uri, "sids": sid_uri, "examples": examples_uri}


def compare_speed(
    cfg: Config, student_uri: str, teacher_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str
) -> StageResult:
    """AR vs block decoding speed on the first test prompts.

    Args:
        cfg: run config (``evaluation.decoding_taus``, ``speed_prompts_batch1/16``, ``max_new_tokens``).
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
        # Longest first, as the decoders order a whole list: batches of like lengths pad little.
        batch_prompts = sorted(prompts[:count], key=lambda prompt: -len(tokenizer(prompt).input_ids))
        decoders = {"ar": model_decoder(teacher, tokenizer, cfg, batch_size=batch_size)}
        decoders |= {f"tau={tau}": model_decoder(student, tokenizer, cfg, tau, batch_size=batch_size) for tau in ecfg.decoding_taus}
        decoders["speculative"] = speculative_decoder(teacher, student, tokenizer, cfg, batch_size=batch_size)
        # A warm-up batch per model so that one-off costs (allocations, kernel selection) are not timed.
        for name in ("ar", f"tau={ecfg.decoding_taus[0]}"):
            decoders[name](batch_prompts[:batch_size])
        generations = _interleaved(decoders, batch_prompts, batch_size)
        ar = generations["ar"]
        entries = {"ar": _entry(ar, len(batch_prompts))}
        for name, generation in generations.items():
            if name == "ar":
                continue
            entry = _entry(generation, len(batch_prompts))
            entry["speedup"] = round(entry["decode_tokens_per_s"] / max(entries["ar"]["decode_tokens_per_s"], 1e-9), 3)
            if isinstance(generation, SpeculativeGeneration):
                entry["mean_accepted_length"] = round(generation.mean_accepted_length, 3)
                same = sum(ours == theirs for ours, theirs in zip(generation.token_ids, ar.token_ids, strict=True))
                entry["same_output_as_ar"] = round(same / len(batch_prompts), 4)
            entries[name] = entry
        report[f"batch_{batch_size}"] = entries
    with publishing(uri, work_dir, report):
        pass
    return StageResult({"speed_uri": uri}, report)
