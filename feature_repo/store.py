"""The feature-store calls the pipeline makes: build the tables, open, apply, materialize, read.

Feast takes 10-20 s to import (it pulls in torch), so it and the definitions that need it are
imported inside the functions that use them; importing this module stays cheap.
"""

from __future__ import annotations

import copy
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from components.config import Config
from components.data.events import event_times
from components.data.splits import training_interactions
from feature_repo.co_purchase import co_purchase_neighbors, decode_neighbors, encode_neighbors

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

USER_KEY = "user_id"
ITEM_KEY = "item_id"
TIME_COLUMN = "event_timestamp"
HISTORY_COLUMN = "history_item_ids"
HISTORY_TEXT_COLUMN = "history_item_ids_text"
CO_PURCHASE_COLUMN = "co_purchase_text"
SERVICE_NAME = "reranker_v1"


def build_feature_tables(
    interactions: pd.DataFrame, items: pd.DataFrame, sids: pd.DataFrame, out_dir: Path
) -> dict[str, Path]:
    """Write the offline tables the feature views read.

    Args:
        interactions: user_id, item_id, timestamp (nullable Unix seconds), position.
        items: item_id, title, brand (nullable), categories (list of str).
        sids: item_id, sid; one row for every item.
        out_dir: directory to write ``user_history.parquet`` and ``item_features.parquet`` into.

    Returns:
        ``{"user_history": path, "item_features": path}``.

    Raises:
        ValueError: an item has no SID, or an item id contains whitespace (histories are stored as
            space-separated text, see features.py).
    """
    from feature_repo.data_sources import ITEM_FEATURES_FILE, ITEM_FEATURES_TIME, USER_HISTORY_FILE

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Event times are unique within a user (components/data/events.py), so this order is total.
    events = interactions.assign(**{TIME_COLUMN: event_times(interactions)}).sort_values(
        [USER_KEY, TIME_COLUMN], kind="stable", ignore_index=True
    )
    item_ids = events[ITEM_KEY].to_numpy()
    spaced = [i for i in np.unique(item_ids) if len(i.split()) != 1]
    if spaced:
        raise ValueError(f"{len(spaced)} item id(s) contain whitespace, e.g. {spaced[0]!r}")
    # Row i's history is the slice of item_ids from its user's first row through row i.
    ends = np.arange(1, len(events) + 1)
    starts = ends - (events.groupby(USER_KEY).cumcount().to_numpy() + 1)
    user_history = pd.DataFrame(
        {
            USER_KEY: events[USER_KEY],
            TIME_COLUMN: events[TIME_COLUMN],
            HISTORY_TEXT_COLUMN: [" ".join(item_ids[s:e]) for s, e in zip(starts, ends)],
            "history_length": (ends - starts).astype("int64"),
        }
    )

    item_features = items[[ITEM_KEY, "title", "brand", "categories"]].merge(
        sids[[ITEM_KEY, "sid"]], on=ITEM_KEY, how="left", validate="one_to_one"
    )
    missing = item_features.loc[item_features["sid"].isna(), ITEM_KEY]
    if len(missing):
        raise ValueError(f"{len(missing)} item(s) have no SID, e.g. {', '.join(missing.head(5))}")
    neighbors = co_purchase_neighbors(training_interactions(interactions))
    item_features[CO_PURCHASE_COLUMN] = [encode_neighbors(neighbors.get(i, {})) for i in item_features[ITEM_KEY]]
    counts = interactions[ITEM_KEY].value_counts()
    item_features["popularity"] = item_features[ITEM_KEY].map(counts).fillna(0).astype("int64")
    item_features["categories"] = item_features["categories"].map(list)
    item_features[TIME_COLUMN] = pd.Timestamp(ITEM_FEATURES_TIME)

    paths = {"user_history": out_dir / USER_HISTORY_FILE, "item_features": out_dir / ITEM_FEATURES_FILE}
    user_history.to_parquet(paths["user_history"], index=False)
    item_features.to_parquet(paths["item_features"], index=False)
    return paths


def open_store(cfg: Config, repo_dir: Path) -> FeatureStore:
    """A FeatureStore configured from ``cfg.features``, with its local state under ``repo_dir``.

    Args:
        cfg: the run config; ``cfg.features`` picks the registry (sql on sqlite or Postgres, or a
            file) and the online store (sqlite or Redis).
        repo_dir: the store's directory: Feast's repo path, and home of the sqlite registry and
            sqlite online store when those are configured. Table locations are not needed here:
            the registry records them (apply_definitions).

    Returns:
        The store. Nothing is created until something is applied or materialized.
    """
    from feast import FeatureStore, RepoConfig
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.infra.registry.sql import SqlRegistryConfig
    from feast.repo_config import RegistryConfig

    features = cfg.features
    repo_dir = Path(repo_dir).resolve()
    repo_dir.mkdir(parents=True, exist_ok=True)
    # SqlRegistry refreshes its cache after each write (cache_mode "sync"); the TTL bounds how
    # stale a reader in another process can be. pool_pre_ping survives Postgres restarts.
    registry: RegistryConfig
    if features.registry_type == "sql":
        registry = SqlRegistryConfig(
            path=features.registry_path or f"sqlite:///{repo_dir / 'registry.db'}",
            cache_ttl_seconds=60,
            sqlalchemy_config_kwargs={"pool_pre_ping": True},
        )
    else:
        registry = RegistryConfig(path=features.registry_path or str(repo_dir / "registry.pb"), cache_ttl_seconds=60)
    online_store = (
        SqliteOnlineStoreConfig(path=str(repo_dir / "online_store.db"))
        if features.online_store == "sqlite"
        else RedisOnlineStoreConfig(connection_string=features.redis_connection_string)
    )
    config = RepoConfig(
        project=features.project,
        provider="local",
        registry=registry,
        online_store=online_store,
        offline_store=DaskOfflineStoreConfig(),
        entity_key_serialization_version=3,
        repo_path=repo_dir,
    )
    return FeatureStore(config=config)


def _reading_from(view: FeatureView, data_dir: Path) -> FeatureView:
    """A copy of ``view`` whose file source is the same-named table in ``data_dir``."""
    source = copy.deepcopy(view.batch_source)
    source.file_options.uri = str(Path(data_dir).resolve() / Path(source.path).name)
    moved = copy.copy(view)
    moved.batch_source = source
    return moved


def apply_definitions(store: FeatureStore, data_dir: Path) -> None:
    """Register the entities, views and feature services, reading their tables from ``data_dir``.

    Args:
        store: from open_store.
        data_dir: directory holding the tables build_feature_tables wrote. Its absolute path is
            recorded in the registry, so it must stay where it is while the store is used.
    """
    from feature_repo.entities import item, user
    from feature_repo.feature_services import reranker_v1
    from feature_repo.features import item_features_view, user_history_view
    from feature_repo.on_demand import user_history_items_view

    views = [_reading_from(view, data_dir) for view in (user_history_view, item_features_view)]
    with warnings.catch_warnings():
        # Feast warns that on-demand views scale badly offline; with this one, the pipeline's
        # 90,000-row point-in-time join takes about 5 s on the full dataset, decoding included.
        warnings.filterwarnings("ignore", "On demand feature view is an experimental feature", RuntimeWarning)
        store.apply([user, item, *(view.batch_source for view in views), *views, user_history_items_view, reranker_v1])


def materialize(store: FeatureStore, end: datetime) -> None:
    """Load each entity's latest row at or before ``end`` into the online store.

    Args:
        store: a store with definitions applied.
        end: tz-aware upper bound on event times.
    """
    from feature_repo.data_sources import ITEM_FEATURES_TIME

    # The whole history, from the earliest possible event time (see data_sources.py).
    store.materialize(start_date=ITEM_FEATURES_TIME, end_date=end)


def historical_histories(store: FeatureStore, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Each user's item history as of each row's event time (a point-in-time join).

    Args:
        store: a store with definitions applied.
        entity_df: ``user_id`` and tz-aware ``event_timestamp`` columns, plus any others. A history
            holds the interactions at or before the timestamp, so for an example whose target is
            at t, ask at t - 1 s.

    Returns:
        ``entity_df`` in its row order with ``history_item_ids`` added (list of item ids, most
        recent last; empty when the user has no interaction by then).

    Raises:
        ValueError: a missing column or a tz-naive timestamp.
    """
    from feature_repo.on_demand import user_history_items_view

    missing = {USER_KEY, TIME_COLUMN} - set(entity_df.columns)
    if missing:
        raise ValueError(f"entity_df lacks column(s) {', '.join(sorted(missing))}")
    times = entity_df[TIME_COLUMN]
    if not isinstance(times.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"entity_df.{TIME_COLUMN} must be tz-aware (got {times.dtype}); naive times are ambiguous")
    utc_times = times.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    keys = pd.DataFrame({USER_KEY: entity_df[USER_KEY].astype(str), TIME_COLUMN: utc_times})
    # Feast's dask join collapses rows with equal (key, time), so ask once per pair and join back.
    unique_keys = keys.drop_duplicates(ignore_index=True)
    found = store.get_historical_features(
        entity_df=unique_keys, features=[f"{user_history_items_view.name}:{HISTORY_COLUMN}"]
    ).to_df()
    found[TIME_COLUMN] = found[TIME_COLUMN].astype("datetime64[ns, UTC]")
    # A left merge keeps the left frame's row order. The dask join drops an entity row whose user
    # has rows but none at or before its time, so a missing row means an empty history. Lists
    # come back as numpy arrays.
    joined = keys.merge(found[[USER_KEY, TIME_COLUMN, HISTORY_COLUMN]], on=[USER_KEY, TIME_COLUMN], how="left")
    histories = [list(ids) if isinstance(ids, (list, np.ndarray)) else [] for ids in joined[HISTORY_COLUMN]]
    return entity_df.assign(**{HISTORY_COLUMN: histories})


def historical_co_purchases(store: FeatureStore, item_ids: list[str]) -> dict[str, dict[str, int]]:
    """Each item's training-split co-purchases from the offline store (``co_purchase_text`` decoded).

    Item rows are stamped at the epoch and describe the catalogue, so any query time sees the same
    row; the join asks as of now.

    Args:
        store: a store with definitions applied.
        item_ids: the items to read; an item the store lacks has no co-purchases.

    Returns:
        item id -> co-bought item id -> users who bought both.
    """
    from feature_repo.features import item_features_view

    unique = sorted(set(item_ids))
    entity_df = pd.DataFrame({ITEM_KEY: unique, TIME_COLUMN: pd.Timestamp.now(tz="UTC")})
    found = store.get_historical_features(
        entity_df=entity_df, features=[f"{item_features_view.name}:{CO_PURCHASE_COLUMN}"]
    ).to_df()
    texts = dict(zip(found[ITEM_KEY], found[CO_PURCHASE_COLUMN]))
    return {item: decode_neighbors(texts.get(item)) for item in unique}


def _service_refs(store: FeatureStore) -> dict[str, list[str]]:
    """Feature references of the served feature service, grouped by feature view name."""
    service = store.get_feature_service(SERVICE_NAME)
    return {
        projection.name_to_use(): [f"{projection.name_to_use()}:{feature.name}" for feature in projection.features]
        for projection in service.feature_view_projections
    }


def _online_rows(store: FeatureStore, refs: list[str], key: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    columns = store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_dict()
    names = [ref.split(":", 1)[1] for ref in refs]
    return {i: {name: columns[name][row] for name in names} for row, i in enumerate(columns[key])}


def online_features(
    store: FeatureStore, user_ids: list[str], item_ids: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Latest features of the re-ranker's feature service from the online store.

    Args:
        store: a materialized store.
        user_ids: users whose latest history to read.
        item_ids: items whose features to read.

    Returns:
        ``{"users": {user_id: {"history_item_ids": [...]}}, "items": {item_id: {"sid": ..., ...}}}``
        with the service's features. An unknown user has an empty history; an unknown item has
        None for every feature.
    """
    from feature_repo.features import item_features_view
    from feature_repo.on_demand import user_history_items_view

    refs = _service_refs(store)
    users = _online_rows(store, refs[user_history_items_view.name], USER_KEY, user_ids)
    items = _online_rows(store, refs[item_features_view.name], ITEM_KEY, item_ids)
    return {"users": users, "items": items}
