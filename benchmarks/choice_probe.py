"""Does a trained teacher read the evidence for its pick, or write the most frequent pick?

    python benchmarks/choice_probe.py --summary benchmarks/results/teacher_<name>.json --config configs/tiny.yaml [--set ...]

Takes the SFT model and the traces of a ``benchmarks/teacher.py`` run (its JSON summary names them;
the artifacts must still be on this machine) and, on a seeded sample of those training traces,
feeds the prompt and the trace up to the first candidate it argues for (``candidate`` at the start
of step 2), then reads the model's next-token probabilities: of the candidate the trace names, and
of candidate 1 (the pre-rank top). Rows split the traces by whether that pick is candidate 1 and
whether the trace's first fact about it is a brand match the prompt shows. A model that reads the
evidence puts more probability on the named candidate where there is evidence; one that writes
its prior gives every row the same numbers. ``--config`` and ``--set`` must be the run's.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from cli_run import run_dgr2  # noqa: E402
from components.config import load_config  # noqa: E402
from components.modeling.factory import load_model  # noqa: E402
from components.prompts.catalog import load_catalog  # noqa: E402
from components.prompts.render import answer_candidates, render_answer, render_example  # noqa: E402
from components.traces.analyst import STEP_TITLES  # noqa: E402
from components.traces.build import read_traces  # noqa: E402

# The analyst's index-form citation of a candidate; the next token is its number.
CITATION = "candidate"


def _token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise SystemExit(f"{text!r} is {len(ids)} tokens for this tokenizer; the probe reads one")
    return ids[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, required=True, help="a benchmarks/teacher.py JSON summary")
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--traces", type=int, default=1000, help="training traces sampled")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    if cfg.prompts.answer_ids != "index":
        raise SystemExit("the probe reads candidate numbers: it needs prompts.answer_ids=index")
    summary = json.loads(args.summary.read_text())
    work_dir = cfg.storage.work_dir
    outputs = run_dgr2("data", args.config, args.overrides)[1]["outputs"]
    catalog = load_catalog(outputs["dataset_uri"], outputs["sid_uri"], work_dir)
    model, tokenizer, _ = load_model(summary["models"]["SFT"])
    model.eval()
    traces = read_traces(summary["traces_uri"], work_dir)
    traces = traces.sample(n=min(args.traces, len(traces)), random_state=cfg.evaluation.seed)
    marker = f"{STEP_TITLES[1]} {CITATION}"
    top_id = _token_id(tokenizer, " 1")
    rows = []
    for trace in traces.to_dict("records"):
        candidates = list(trace["candidates"])
        candidate_sids = catalog.sids(candidates)
        answer = render_answer(trace["reasoning"], catalog.sids(list(trace["ranking"])), answer_candidates(candidate_sids, cfg.prompts))
        if marker not in answer:
            continue  # the trace states no fact about any candidate
        cut = answer.index(marker) + len(marker)
        named = answer[cut:].split()[0]
        messages = render_example(trace, catalog, cfg.prompts)
        prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer[:cut]
        ids = tokenizer(prefix, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            probs = model(ids).logits[0, -1].float().softmax(-1)
        named_id = _token_id(tokenizer, f" {named}")
        rows.append(
            {
                "pick": "candidate 1" if named == "1" else "another candidate",
                "brand evidence": answer[cut:].split(".")[0].startswith(f" {named} is by "),
                "p(named)": float(probs[named_id]),
                "p(candidate 1)": float(probs[top_id]),
                "argmax is named": int(probs.argmax()) == named_id,
            }
        )
    columns = ("p(named)", "p(candidate 1)", "argmax is named")
    shown = " ".join(["python benchmarks/choice_probe.py --summary", str(args.summary), "--config", args.config, *(f"--set {s}" for s in args.overrides)])
    lines = [
        "# Does the SFT teacher read the evidence for its pick?",
        "",
        f"- command: `{shown}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d')}; SFT model `{summary['models']['SFT']}`",
        f"- {len(rows)} of {len(traces)} sampled training traces argue for a candidate; probabilities of the next token after `{marker}`",
        "",
    ]
    lines += ["| pick | brand evidence | traces | " + " | ".join(columns) + " |", "|---|---|---|---|---|---|"]
    for (pick, evidence), group in pd.DataFrame(rows).groupby(["pick", "brand evidence"]):
        lines.append(f"| {pick} | {'yes' if evidence else 'no'} | {len(group)} | " + " | ".join(f"{group[c].mean():.3f}" for c in columns) + " |")
    name = args.summary.stem.split("_", 1)[-1]
    out = args.results / f"choice_probe_{name}.md"
    args.results.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
