"""Serve the lifecycle deployments from this process (a laptop's scheduler; no work pool needed).

    python -m flows.serve [--config configs/tiny.yaml] [--set section.key=value ...]

needs a Prefect server (``make stack-up`` exports ``PREFECT_API_URL``): schedules do not run on the
ephemeral API. It serves four deployments, the same as ``deploy/prefect.yaml`` declares for a
work pool:

- ``recipe/recipe``: manual; the whole recipe.
- ``retrain/retrain``: cron ``DGR2_RETRAIN_CRON`` (default weekly, Monday 03:00 UTC).
- ``evaluate-champion/evaluate-champion``: cron ``DGR2_EVALUATE_CRON`` (default daily, 06:00 UTC).
- ``check-drift/check-drift``: cron ``DGR2_DRIFT_CRON`` (default hourly); needs
  ``monitoring.service_url``, and triggers ``retrain/retrain`` when the traffic drifted.

Trigger one with ``prefect deployment run retrain/retrain --watch``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from prefect import serve

from flows.recipe import recipe_flow
from flows.retrain import check_drift_flow, evaluate_champion_flow, retrain_flow

RETRAIN_CRON = "0 3 * * 1"
EVALUATE_CRON = "0 6 * * *"
DRIFT_CRON = "0 * * * *"


def deployments(config: str, overrides: list[str]) -> list[Any]:
    """The four deployments over one profile and its overrides."""
    parameters = {"config": config, "overrides": overrides}
    return [
        recipe_flow.to_deployment(name="recipe", parameters=parameters, tags=["dgr2"]),
        retrain_flow.to_deployment(name="retrain", cron=os.environ.get("DGR2_RETRAIN_CRON", RETRAIN_CRON), parameters=parameters, tags=["dgr2"]),
        evaluate_champion_flow.to_deployment(
            name="evaluate-champion", cron=os.environ.get("DGR2_EVALUATE_CRON", EVALUATE_CRON), parameters=parameters, tags=["dgr2"]
        ),
        check_drift_flow.to_deployment(name="check-drift", cron=os.environ.get("DGR2_DRIFT_CRON", DRIFT_CRON), parameters=parameters, tags=["dgr2"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    serve(*deployments(args.config, args.overrides))


if __name__ == "__main__":
    main()
