"""Champion history and rollback on a real MLflow registry (sqlite backend)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from components.tracking.champions import RegistryError, champion_history, rollback
from components.tracking.promotion import CHAMPION, promote
from components.tracking.registry import version_by_alias
from components.tracking.runs import client
from tests.conftest import REPO_ROOT
from tests.unit.tracking.test_promotion import GOOD, gate, moved_to_top, registered_three_versions, tracked  # noqa: F401

NAME = "diffusion-gr2"


@pytest.fixture
def two_champions(tracked):  # noqa: F811 - the fixture imported above
    """Versions 1 and 3 promoted in turn (2 registered, never champion)."""
    cfg, checkpoint = tracked
    first, _, better = registered_three_versions(cfg, checkpoint)
    assert promote(cfg, first, GOOD, None).promote
    assert promote(cfg, better, gate(moved_to_top(0.5, seed=2)), GOOD).promote
    return cfg


def _champion(cfg) -> str:
    return str(version_by_alias(cfg, NAME, CHAMPION).version)


def test_promotions_are_recorded_and_a_rollback_returns_to_the_previous_champion(two_champions) -> None:
    cfg = two_champions
    assert [(e["version"], e["kind"], e["reason"]) for e in champion_history(cfg, NAME)] == [
        ("1", "promote", "passed every gate"),
        ("3", "promote", "passed every gate"),
    ]
    event = rollback(cfg, NAME, "p99 doubled after the release", by="oncall")
    assert (event["from"], event["version"], _champion(cfg)) == ("3", "1", "1")
    restored, demoted = (client(cfg).get_model_version(NAME, v).tags for v in ("1", "3"))
    assert (restored["rollback.from"], restored["rollback.by"], restored["rollback.reason"]) == ("3", "oncall", "p99 doubled after the release")
    assert (demoted["rolled_back.to"], demoted["rolled_back.at"]) == ("1", event["at"])
    assert champion_history(cfg, NAME)[-1] == {k: event[k] for k in ("version", "kind", "at", "by", "reason")}

    # Forward again to a named version.
    assert rollback(cfg, NAME, "fixed upstream", to="3")["from"] == "1" and _champion(cfg) == "3"
    assert [e["version"] for e in champion_history(cfg, NAME)] == ["1", "3", "1", "3"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reason": "  "}, "needs a --reason"),
        ({"reason": "r", "to": "9"}, "has no version 9"),
        ({"reason": "r", "to": "3"}, "version 3 is already the champion"),
    ],
)
def test_a_rollback_that_cannot_be_done_says_why_and_moves_nothing(two_champions, kwargs, message) -> None:
    with pytest.raises(RegistryError, match=message):
        rollback(two_champions, NAME, **kwargs)
    assert _champion(two_champions) == "3"


def test_a_rollback_to_another_catalogues_model_is_refused(two_champions) -> None:
    client(two_champions).set_model_version_tag(NAME, "1", "catalog", "amazon-toys")
    with pytest.raises(RegistryError, match="catalogue 'amazon-toys'"):
        rollback(two_champions, NAME, "try")
    with pytest.raises(RegistryError, match="no champion to roll back"):
        rollback(two_champions, "gr2-ar", "try")


def test_the_cli_lists_the_history_and_rolls_back(two_champions) -> None:
    cfg = two_champions
    sets = [arg for item in (f"tracking.tracking_uri={cfg.tracking.tracking_uri}", f"storage.work_dir={cfg.storage.work_dir}") for arg in ("--set", item)]

    def dgr2(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", *args, *sets], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    rolled = dgr2("rollback", NAME, "--reason", "bad canary", "--json")
    assert rolled.returncode == 0, rolled.stderr[-2000:]
    assert json.loads(rolled.stdout)["version"] == "1"
    listed = json.loads(dgr2("history", NAME, "--json").stdout)
    assert listed["champion"] == "1" and [e["kind"] for e in listed["events"]] == ["promote", "promote", "rollback"]
    readable = dgr2("history", NAME)
    assert "bad canary" in readable.stdout and "rollback" in readable.stdout
    refused = dgr2("rollback", NAME, "--reason", "again", "--to", "1")
    assert refused.returncode == 2 and "version 1 is already the champion" in refused.stderr
