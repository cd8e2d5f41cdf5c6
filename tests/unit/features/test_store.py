"""feature_repo.store against a real Feast store (sqlite registry and online store, dask offline)."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from components.data.events import event_times
from feature_repo.store import (
    apply_definitions,
    build_feature_tables,
    historical_co_purchases,
    historical_histories,
    materialize,
    online_features,
    open_store,
)

SECOND = pd.Timedelta(seconds=1)


def _ready_store(cfg, interactions, items, sids, root: Path):
    build_feature_tables(interactions, items, sids, root / "tables")
    store = open_store(cfg, root / "store")
    apply_definitions(store, root / "tables")
    return store


def _expected_history(interactions: pd.DataFrame, user_id: str, as_of: pd.Timestamp) -> list[str]:
    events = interactions.assign(t=event_times(interactions)).sort_values("t")
    return events.loc[(events["user_id"] == user_id) & (events["t"] <= as_of), "item_id"].tolist()


def test_build_feature_tables_writes_histories_and_items(tmp_path, interactions, items, sids):
    paths = build_feature_tables(interactions, items, sids, tmp_path)

    history = pd.read_parquet(paths["user_history"])
    a_rows = history[history["user_id"] == "a"].sort_values("event_timestamp")
    assert a_rows["history_item_ids_text"].tolist() == ["i1", "i1 i2", "i1 i2 i3", "i1 i2 i3 i4"]
    assert a_rows["history_length"].tolist() == [1, 2, 3, 4]
    assert len(history) == len(interactions)
    item_rows = pd.read_parquet(paths["item_features"]).set_index("item_id")
    assert item_rows["popularity"].to_dict() == {"i1": 3, "i2": 3, "i3": 3, "i4": 2, "i5": 0}
    assert item_rows.loc["i2", "brand"] is None
    assert list(item_rows.loc["i1", "categories"]) == ["Makeup", "Nails"]
    assert (item_rows["event_timestamp"] == pd.Timestamp(0, tz="UTC")).all()
    # Co-purchases count the training split only (each user's interactions but the last two):
    # a's i1 and i2; b and c have no training interactions, d only i4.
    assert item_rows["co_purchase_text"].to_dict() == {"i1": "i2:1", "i2": "i1:1", "i3": "", "i4": "", "i5": ""}


def test_build_feature_tables_rejects_missing_sid_and_spaced_ids(tmp_path, interactions, items, sids):
    with pytest.raises(ValueError, match="1 item\\(s\\) have no SID, e.g. i5"):
        build_feature_tables(interactions, items, sids[sids["item_id"] != "i5"], tmp_path)
    spaced = interactions.assign(item_id=interactions["item_id"].replace("i4", "i 4"))
    with pytest.raises(ValueError, match="whitespace"):
        build_feature_tables(spaced, items, sids, tmp_path)


def test_history_as_of_t_holds_exactly_the_interactions_up_to_t(make_config, tmp_path, interactions, items, sids):
    store = _ready_store(make_config(), interactions, items, sids, tmp_path)
    times = event_times(interactions)
    first_day = int(interactions["timestamp"].min())
    # Every interaction, asked both one second before it (the caller's convention for a target at
    # t) and at it; plus a time before any review, an unknown user, and a repeated row.
    queries = pd.concat(
        [
            pd.DataFrame({"user_id": interactions["user_id"], "event_timestamp": times - SECOND}),
            pd.DataFrame({"user_id": interactions["user_id"], "event_timestamp": times}),
            pd.DataFrame(
                {
                    "user_id": ["a", "nobody", "a"],
                    "event_timestamp": pd.to_datetime([first_day - 86_400, first_day, first_day], unit="s", utc=True),
                }
            ),
        ],
        ignore_index=True,
    )
    # Shuffled, with a non-default index and an extra column, to check order and pass-through.
    queries = queries.sample(frac=1, random_state=0).set_index(pd.RangeIndex(100, 100 + len(queries)))
    queries["example_id"] = range(len(queries))

    result = historical_histories(store, queries)

    pd.testing.assert_frame_equal(result.drop(columns="history_item_ids"), queries)
    for row in result.itertuples():
        assert row.history_item_ids == _expected_history(interactions, row.user_id, row.event_timestamp), row
    # Same-day ties: a reviewed i1, i2 and i3 on one day; a second before i3 shows i1 and i2 only.
    before_i3 = result[(result["user_id"] == "a") & (result["event_timestamp"] == times[2] - SECOND)]
    assert {tuple(ids) for ids in before_i3["history_item_ids"]} == {("i1", "i2")}
    assert result.loc[result["user_id"] == "nobody", "history_item_ids"].tolist() == [[]]


def test_historical_histories_rejects_naive_timestamps(make_config, tmp_path, interactions, items, sids):
    store = _ready_store(make_config(), interactions, items, sids, tmp_path)
    naive = pd.DataFrame({"user_id": ["a"], "event_timestamp": [pd.Timestamp("2012-01-01")]})
    with pytest.raises(ValueError, match="tz-aware"):
        historical_histories(store, naive)


def test_materialize_serves_latest_history_and_item_features(make_config, tmp_path, interactions, items, sids):
    store = _ready_store(make_config(), interactions, items, sids, tmp_path)
    materialize(store, datetime.now(timezone.utc))

    served = online_features(store, ["a", "c", "nobody"], ["i1", "i2", "unknown"])

    assert served["users"] == {
        "a": {"history_item_ids": ["i1", "i2", "i3", "i4"]},
        "c": {"history_item_ids": ["i3", "i1"]},
        "nobody": {"history_item_ids": []},
    }
    assert served["items"]["i1"] == {
        "sid": "<s_a_0><s_b_0>",
        "title": "Nail polish",
        "brand": "OPI",
        "categories": ["Makeup", "Nails"],
        "co_purchase_text": "i2:1",
    }
    assert served["items"]["i2"]["brand"] is None
    assert set(served["items"]["unknown"].values()) == {None}


def test_offline_co_purchases_match_the_tables(make_config, tmp_path, interactions, items, sids):
    store = _ready_store(make_config(), interactions, items, sids, tmp_path)
    assert historical_co_purchases(store, ["i1", "i3", "i1", "unknown"]) == {"i1": {"i2": 1}, "i3": {}, "unknown": {}}


def test_feature_service_resolves_by_name(make_config, tmp_path, interactions, items, sids):
    # Clients ask Feast for the model's features by service, not through online_features.
    store = _ready_store(make_config(), interactions, items, sids, tmp_path)
    materialize(store, datetime.now(timezone.utc))

    served = store.get_online_features(
        features=store.get_feature_service("reranker_v1"), entity_rows=[{"user_id": "b", "item_id": "i4"}]
    ).to_dict()

    assert served["history_item_ids"] == [["i2", "i1"]]
    assert served["sid"] == ["<s_a_3><s_b_6>"]


def test_materialize_stops_at_end(make_config, tmp_path, interactions, items, sids):
    store = _ready_store(make_config(), interactions, items, sids, tmp_path)
    # Between the first and the second review day: a and b have only their first-day reviews.
    first_day = int(interactions["timestamp"].min())
    materialize(store, pd.Timestamp(first_day + 86_400, unit="s", tz="UTC").to_pydatetime())

    served = online_features(store, ["a", "b"], [])

    assert served["users"]["a"]["history_item_ids"] == ["i1", "i2", "i3"]
    assert served["users"]["b"]["history_item_ids"] == ["i2"]


# ------------------------------------------------------------------ production profile

POSTGRES_URL = os.environ.get("DGR2_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_ADDRESS = os.environ.get("DGR2_TEST_REDIS", "127.0.0.1:6379")


@pytest.fixture
def production_services():
    """SQLAlchemy engine and Redis client for the local services; build and CI machines run both,
    so a missing service fails the test rather than skipping it."""
    import redis
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL)
    host, port = REDIS_ADDRESS.split(":")
    client = redis.Redis(host=host, port=int(port))
    try:
        with engine.connect():
            pass
        client.ping()
    except (sqlalchemy.exc.OperationalError, redis.ConnectionError) as exc:
        pytest.fail(f"needs Postgres at {POSTGRES_URL} and Redis at {REDIS_ADDRESS}: {exc}")
    yield engine, client
    engine.dispose()
    client.close()


@pytest.mark.integration
def test_production_profile_lands_in_postgres_and_redis(
    make_config, tmp_path, interactions, items, sids, production_services
):
    import sqlalchemy

    engine, client = production_services
    # A project of its own, so the run touches no one else's registry rows or Redis keys.
    project = f"dgr2_test_{uuid.uuid4().hex[:12]}"
    cfg = make_config(
        "features.registry_type=sql",
        f"features.registry_path={POSTGRES_URL}",
        "features.online_store=redis",
        f"features.redis_connection_string={REDIS_ADDRESS}",
        f"features.project={project}",
    )
    # Feast's Redis keys are the serialized entity key followed by the project name.
    key_pattern = f"*{project}"
    store = _ready_store(cfg, interactions, items, sids, tmp_path)
    try:
        materialize(store, datetime.now(timezone.utc))

        with engine.connect() as conn:
            views = conn.execute(
                sqlalchemy.text("SELECT feature_view_name FROM feature_views WHERE project_id = :p"), {"p": project}
            )
            services = conn.execute(
                sqlalchemy.text("SELECT feature_service_name FROM feature_services WHERE project_id = :p"),
                {"p": project},
            )
            assert {r[0] for r in views} == {"user_history_view", "item_features_view"}
            assert [r[0] for r in services] == ["reranker_v1"]
        keys = list(client.scan_iter(match=key_pattern))
        # One hash per entity key: each user and each item.
        assert len(keys) == interactions["user_id"].nunique() + len(items)
        served = online_features(store, ["a"], ["i3"])
        assert served["users"]["a"]["history_item_ids"] == ["i1", "i2", "i3", "i4"]
        assert served["items"]["i3"]["sid"] == "<s_a_2><s_b_4>"
    finally:
        # FeatureStore.teardown() would delete every project in the shared registry; delete ours.
        for key in client.scan_iter(match=key_pattern):
            client.delete(key)
        store.registry.delete_project(project)
        # delete_project leaves the version history that apply writes (feast 0.67).
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.text("DELETE FROM feature_view_version_history WHERE project_id = :p"), {"p": project}
            )

    with engine.connect() as conn:
        tables = sqlalchemy.inspect(conn).get_table_names()
        leftover = {
            table: conn.execute(
                sqlalchemy.text(f'SELECT count(*) FROM "{table}" WHERE project_id = :p'), {"p": project}
            ).scalar()
            for table in tables
            if "project_id" in {c["name"] for c in sqlalchemy.inspect(conn).get_columns(table)}
        }
    assert set(leftover.values()) == {0}, leftover
    assert not list(client.scan_iter(match=key_pattern))
