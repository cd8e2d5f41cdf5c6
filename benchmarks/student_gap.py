"""Where the final block-diffusion student loses Recall@1 to its AR teacher, on the latest run's models.

    python benchmarks/student_gap.py [--config configs/tiny.yaml] [--tau 1.0]

Decodes every test-sample prompt greedily with the AR teacher and with the final student (block
decoder at ``--tau``), checks both answers, and splits the student's R@1 minus the teacher's by
whether each answer was valid (an invalid one falls back to the pre-rank order). For users whose
answers are both valid and disagree on the top candidate, it says whether the reasoning names the
same candidate first ("I rank ... first"): a different one means the student read the prompt
differently, the same one that its ranking does not follow its reasoning. Appends a section to
benchmarks/results/student_gap.md.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_run import REPO_ROOT, append_record, current_commit  # noqa: E402
from components.decoding.ar import generate  # noqa: E402
from components.decoding.block import generate_blocks  # noqa: E402
from components.prompts.answer import parse_answer  # noqa: E402
from recipe_models import latest_recipe_models  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "student_gap.md"
# The analyst traces' selection sentence: "I rank candidate 9 first, ..." (or a SID).
SELECTION = re.compile(r"I rank (.+?) first")


def _selection(text: str) -> str | None:
    found = SELECTION.search(text)
    return found.group(1) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--tau", type=float, default=1.0, help="the student's decoding threshold")
    args = parser.parse_args()
    models = latest_recipe_models(args.config)
    tokenizer, catalog, test, prompts, summary = models.tokenizer, models.catalog, models.test, models.prompts, models.summary
    new_tokens, batch_size = models.cfg.evaluation.max_new_tokens, models.cfg.evaluation.decode_batch_size
    teacher_texts = generate(models.teacher, tokenizer, prompts, new_tokens, batch_size=batch_size).texts
    student_texts = generate_blocks(models.student, tokenizer, prompts, new_tokens, threshold=args.tau, batch_size=batch_size).texts

    users, gain = Counter(), Counter()
    same_reasoning = Counter()
    for teacher_text, student_text, candidates, target in zip(teacher_texts, student_texts, test["candidates"], test["target"]):
        sids = catalog.sids(list(candidates))
        target_sid = catalog.sid(target)
        answers = [parse_answer(text, sids) for text in (teacher_text, student_text)]
        tops = [answer.ranking[0] if answer.valid else sids[0] for answer in answers]
        case = tuple("valid" if answer.valid else "invalid" for answer in answers)
        users[case] += 1
        gain[case] += (tops[1] == target_sid) - (tops[0] == target_sid)
        if case == ("valid", "valid") and tops[0] != tops[1]:
            same_reasoning[_selection(teacher_text) == _selection(student_text)] += 1

    n = len(prompts)
    lines = [
        f"\n## {datetime.now(timezone.utc).date()}, commit {current_commit()}\n",
        f"Command: `python benchmarks/student_gap.py --config {args.config} --tau {args.tau}`; {platform.processor() or platform.machine()}; "
        f"{n:,} test-sample users; teacher `{summary['teacher_model_uri']}`, student `{summary['models']['CFT+OPD+RL']}`.\n",
        "| teacher answer | student answer | users | student - teacher R@1 |",
        "|---|---|---|---|",
    ]
    for case in sorted(users, key=lambda c: (c != ("valid", "valid"), c)):
        lines.append(f"| {case[0]} | {case[1]} | {users[case]:,} | {gain[case] / n:+.4f} |")
    lines.append(f"| all | | {n:,} | {sum(gain.values()) / n:+.4f} |")
    lines.append(
        f"\nBoth valid, different top candidate: {sum(same_reasoning.values())} users; the reasoning names a different "
        f"candidate first in {same_reasoning[False]}, the same one in {same_reasoning[True]}.\n"
    )
    text = "\n".join(lines)
    print(text)
    append_record(RESULTS, "# Where the final student loses Recall@1 to its AR teacher\n", text)


if __name__ == "__main__":
    main()
