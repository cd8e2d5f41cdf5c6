"""The block decoder's two commit rules side by side, on the latest run's final student.

    python benchmarks/commit_rule.py [--config configs/tiny.yaml] [--taus 1.0 0.9 0.7 0.4]

Decodes every test-sample prompt with the final student at each tau, once per commit rule
(``any``: every masked position that reaches tau, the papers'; ``prefix``: the run of masked
positions from the leftmost one that reach tau; components/decoding/block.py), and reports
Recall@1, the valid rate, the invalid answers by failure class and tokens per forward. Appends a
section to benchmarks/results/commit_rule.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_run import REPO_ROOT, append_record, current_commit  # noqa: E402
from components.decoding.block import generate_blocks  # noqa: E402
from components.evaluation.metrics import evaluate_answers  # noqa: E402
from components.modeling.block_diffusion import COMMIT_RULES, block_diffusion_spec  # noqa: E402
from recipe_models import latest_recipe_models  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "commit_rule.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--taus", type=float, nargs="+", default=[1.0, 0.9, 0.7, 0.4])
    args = parser.parse_args()
    models = latest_recipe_models(args.config)
    cfg, student = models.cfg, models.student
    n = len(models.prompts)
    lines = [
        f"\n## {datetime.now(timezone.utc).date()}, commit {current_commit()}\n",
        f"Command: `python benchmarks/commit_rule.py --config {args.config} --taus {' '.join(map(str, args.taus))}`; "
        f"{platform.processor() or platform.machine()}; {n:,} test-sample users; student `{models.summary['models']['CFT+OPD+RL']}` "
        f"(trained with the `{block_diffusion_spec(student).commit_rule}` rule).\n",
        "| tau | rule | Recall@1 | valid | invalid by class | tokens per forward | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for tau in args.taus:
        for rule in COMMIT_RULES:
            generation = generate_blocks(
                student, models.tokenizer, models.prompts, cfg.evaluation.max_new_tokens, threshold=tau,
                batch_size=cfg.evaluation.decode_batch_size, commit_rule=rule,
            )
            scores = evaluate_answers(models.test, generation.texts, models.catalog, cfg.evaluation)
            failures = ", ".join(f"{name} {count}" for name, count in scores["failure_counts"].items() if count) or "-"
            lines.append(
                f"| {tau} | {rule} | {scores['recall_at_1']['mean']:.4f} | {scores['valid_rate']:.2%} | {failures} | "
                f"{generation.tokens_per_forward:.2f} | {generation.seconds:.1f} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    append_record(RESULTS, "# The block decoder's commit rules on the final student\n", text)


if __name__ == "__main__":
    main()
