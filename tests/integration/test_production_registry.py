"""The production profile's registry: MLflow's backend store on the machine's PostgreSQL, in a
database of the test's own (dropped afterwards). Registration and promotion run for real and the
versions, aliases and decision tags are read back with SQL, not through MLflow."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.unit.tracking.test_promotion import check_alias_moves_only_on_improvement, registered_three_versions
from tests.unit.tiny_lm import publish_checkpoint

POSTGRES_URL = os.environ.get("DGR2_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_database():
    """A fresh database on the machine's server, dropped afterwards; a missing server fails the test."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    name = f"dgr2_mlflow_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(f"needs PostgreSQL at {POSTGRES_URL}: {exc}")
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.integration
def test_registry_and_promotion_land_in_postgres(make_config, tmp_path: Path, postgres_database: str) -> None:
    import sqlalchemy

    cfg = make_config(f"tracking.tracking_uri={postgres_database}", "evaluation.max_new_tokens=8")
    check_alias_moves_only_on_improvement(
        cfg,
        registered_three_versions(
            cfg, lambda seed: publish_checkpoint(str(tmp_path / "artifacts" / f"model{seed}"), cfg.storage.work_dir, seed)
        ),
    )
    engine = sqlalchemy.create_engine(postgres_database)
    try:
        with engine.connect() as conn:
            versions = conn.execute(sqlalchemy.text("SELECT name, version FROM model_versions ORDER BY version")).all()
            aliases = dict(conn.execute(sqlalchemy.text("SELECT alias, version FROM registered_model_aliases")).all())
            decisions = dict(
                conn.execute(sqlalchemy.text("SELECT version, value FROM model_version_tags WHERE key = 'promotion.decision'")).all()
            )
            runs = conn.execute(sqlalchemy.text("SELECT count(*) FROM runs")).scalar()
    finally:
        engine.dispose()
    assert versions == [("diffusion-gr2", 1), ("diffusion-gr2", 2), ("diffusion-gr2", 3)]
    assert aliases == {"champion": 3, "challenger": 3}
    assert decisions == {1: "champion", 2: "rejected", 3: "champion"}
    # The recipe run and one child run per logged stage.
    assert runs == 4
