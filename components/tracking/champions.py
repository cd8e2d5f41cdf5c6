"""Who has been champion, and putting an earlier one back.

Every move of a registered model's ``champion`` alias (a promotion through the gates, or a
rollback) appends an event to the model's ``champion.history`` tag: version, when, who, why. A
rollback moves the alias in one registry call and also tags both versions with who rolled back
from which version to which, when and why, so each version's page in the MLflow UI says it too.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime, timezone
from typing import Any

from components.config import Config
from components.tracking.registry import CHAMPION, version_by_alias
from components.tracking.runs import client

HISTORY_TAG = "champion.history"
# MLflow keeps tag values up to 5,000 characters on every backend: the oldest events go first.
_MAX_HISTORY_CHARS = 5000


class RegistryError(ValueError):
    """A rollback that cannot be done as asked; the message says why."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def champion_history(cfg: Config, name: str) -> list[dict[str, Any]]:
    """The champion moves of ``name``, oldest first (empty for a model never promoted)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client(cfg).get_registered_model(name).tags
    except MlflowException:
        return []
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def record_champion(cfg: Config, name: str, version: str, kind: str, reason: str, by: str | None = None) -> dict[str, Any]:
    """Append one champion move (``kind``: ``promote`` or ``rollback``) to the model's history."""
    event = {"version": str(version), "kind": kind, "at": _now(), "by": by or getpass.getuser(), "reason": reason}
    events = [*champion_history(cfg, name), event]
    while len(json.dumps(events)) > _MAX_HISTORY_CHARS and len(events) > 1:
        events.pop(0)
    client(cfg).set_registered_model_tag(name, HISTORY_TAG, json.dumps(events))
    return event


def _previous_champion(cfg: Config, name: str, current: str) -> str:
    for event in reversed(champion_history(cfg, name)):
        if event["version"] != current:
            return event["version"]
    raise RegistryError(f"{name} has had no champion before version {current}: give --to VERSION")


def rollback(cfg: Config, name: str, reason: str, to: str | None = None, by: str | None = None) -> dict[str, Any]:
    """Move ``name@champion`` back to ``to`` (default: the champion before the current one).

    Args:
        cfg: the config naming the tracking server.
        name: the registered model (``diffusion-gr2``, ``gr2-ar``).
        reason: why, recorded with the move; required.
        to: the version to serve instead.
        by: who (default: the OS user).

    Returns:
        The recorded event plus ``from`` (the version that was champion).

    Raises:
        RegistryError: no reason, no champion, no such version, the version is already champion,
            or it was trained on another catalogue than the champion's.
    """
    from mlflow.exceptions import MlflowException

    if not reason.strip():
        raise RegistryError("a rollback needs a --reason")
    current = version_by_alias(cfg, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    target_number = to or _previous_champion(cfg, name, str(current.version))
    mlflow_client = client(cfg)
    try:
        target = mlflow_client.get_model_version(name, target_number)
    except MlflowException:
        raise RegistryError(f"{name} has no version {target_number}") from None
    if str(target.version) == str(current.version):
        raise RegistryError(f"{name} version {target_number} is already the champion")
    # A model of another item catalogue cannot serve this one's candidates.
    if target.tags.get("catalog", "") != current.tags.get("catalog", ""):
        raise RegistryError(
            f"{name} version {target_number} was trained on catalogue {target.tags.get('catalog')!r}, "
            f"the champion on {current.tags.get('catalog')!r}"
        )
    mlflow_client.set_registered_model_alias(name, CHAMPION, target.version)
    event = record_champion(cfg, name, str(target.version), "rollback", reason, by)
    moved = {"at": event["at"], "by": event["by"], "reason": reason}
    for key, value in (moved | {"from": str(current.version)}).items():
        mlflow_client.set_model_version_tag(name, target.version, f"rollback.{key}", value)
    for key, value in (moved | {"to": str(target.version)}).items():
        mlflow_client.set_model_version_tag(name, current.version, f"rolled_back.{key}", value)
    return event | {"from": str(current.version)}
