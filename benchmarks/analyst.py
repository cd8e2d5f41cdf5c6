"""How well the offline trace teacher re-ranks on its own: the most its traces can teach a model.

    python benchmarks/analyst.py --config configs/tiny.yaml [--split valid] [--examples 3000]

Runs ``dgr2 data --json`` (cached after a first run), then ranks a seeded sample of one split with
the analyst at temperature 0 (its score order, no noise), with each of its signals alone (ties
broken by the pre-rank), and with the promote-top-1 answer the tiny profile's traces teach. Each
row is compared with the pre-rank floor on the same examples (paired bootstrap CIs). A signal
marked "in the prompt" is one a model can read off its prompt; the others are training-split
counts it must memorise. Writes ``benchmarks/results/analyst_<split>.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from cli_run import run_dgr2  # noqa: E402
from components.candidates.examples import read_examples, split_examples  # noqa: E402
from components.config import AnalystWeights, load_config  # noqa: E402
from components.data.ingest import load_dataset  # noqa: E402
from components.prompts.catalog import load_catalog  # noqa: E402
from components.rank_metrics import paired_difference_ci, ranking_metrics  # noqa: E402
from components.data.splits import training_interactions  # noqa: E402
from components.traces.analyst import AnalystStats, AnalystTeacher  # noqa: E402

# Breaks a lone signal's ties by the pre-rank without outweighing any real difference.
TIE_BREAK = 1e-6


def _teachers(stats: AnalystStats, weights: AnalystWeights, include_brand: bool) -> dict[str, AnalystTeacher]:
    """The analyst rankers to compare, by table row label."""
    rows = {"analyst, default weights": AnalystTeacher(stats, temperature=0.0)}
    if weights != AnalystWeights():
        rows[f"analyst, the config's weights ({_nonzero(weights)})"] = AnalystTeacher(stats, temperature=0.0, weights=weights)
    rows["the config's analyst top 1, rest in pre-rank order"] = AnalystTeacher(stats, temperature=0.0, weights=weights, promote_top=1)
    silent = AnalystWeights(**dict.fromkeys(AnalystWeights.model_fields, 0.0))
    for signal in AnalystWeights.model_fields:
        if signal == "pre_rank":
            continue
        # A prompt always shows categories (and the pre-rank order); brands with prompts.include_brand.
        visible = signal == "category" or (signal == "brand" and include_brand)
        label = f"{signal} alone" + (" (in the prompt)" if visible else "")
        rows[label] = AnalystTeacher(stats, temperature=0.0, weights=silent.model_copy(update={signal: 1.0, "pre_rank": TIE_BREAK}))
    return rows


def _nonzero(weights: AnalystWeights) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in weights.model_dump().items() if value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--examples", type=int, default=3000, help="a seeded sample of the split (0: all)")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    outputs = run_dgr2("data", args.config, args.overrides)[1]["outputs"]
    work_dir = cfg.storage.work_dir
    catalog = load_catalog(outputs["dataset_uri"], outputs["sid_uri"], work_dir)
    stats = AnalystStats.fit(training_interactions(load_dataset(outputs["dataset_uri"], work_dir).interactions), catalog)
    examples = split_examples(read_examples(outputs["examples_uri"], work_dir), args.split, args.examples, cfg.evaluation.seed)
    records = examples.to_dict("records")
    floor_ranks = examples["target_pre_rank"].to_numpy()
    floor = ranking_metrics(floor_ranks, cfg.evaluation)
    lines = ["| ranker | R@1 | NDCG@3 | R@1 - floor | NDCG@3 - floor | top 1 is the pre-rank top |", "|---|---|---|---|---|---|"]
    lines.append(f"| pre-rank floor | {floor['recall_at_1']['mean']:.4f} | {floor['ndcg_at_3']['mean']:.4f} | - | - | 100.0% |")
    rng = np.random.default_rng(0)  # unused at temperature 0, but propose() draws its noise from it
    for label, teacher in _teachers(stats, cfg.traces.weights, cfg.prompts.include_brand).items():
        ranks, kept_top = [], 0
        for example in tqdm(records, desc=label, file=sys.stderr, leave=False):
            ranking = teacher.propose(example, catalog, rng, None).ranking
            ranks.append(ranking.index(example["target"]) + 1)
            kept_top += ranking[0] == example["candidates"][0]
        metrics = ranking_metrics(ranks, cfg.evaluation)
        cells = [f"{metrics[m]['mean']:.4f}" for m in ("recall_at_1", "ndcg_at_3")]
        for metric in ("recall_at_1", "ndcg_at_3"):
            diff = paired_difference_ci(ranks, floor_ranks, metric, cfg.evaluation)
            cells.append(f"{diff['mean']:+.4f} [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}]")
        lines.append(f"| {label} | {' | '.join(cells)} | {kept_top / len(records):.1%} |")
    shown = " ".join(["python benchmarks/analyst.py --config", args.config, *(f"--set {s}" for s in args.overrides),
                      f"--split {args.split} --examples {args.examples}"])
    text = "\n".join([
        f"# The analyst trace teacher as a re-ranker ({args.split}, {len(records):,} examples)",
        "",
        f"- command: `{shown}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d')}; {platform.machine()}; dataset version `{outputs['dataset_version']}`",
        "- temperature 0; differences are paired bootstrap 95% CIs against the floor on the same examples",
        "",
        *lines,
        "",
    ])
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"analyst_{args.split}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
