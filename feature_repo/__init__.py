"""Feast feature repository for users and items, and the Python API the pipeline uses.

The directory is both a Feast repo (``feast -c feature_repo plan|apply``; the laptop profile is
``feature_store.yaml``, production ``feature_store.production.yaml``) and a package: ``store``
holds the calls the pipeline makes and ``stage`` the ``build_features`` stage. Definitions are
one file per Feast object kind: ``entities``, ``data_sources``, ``features``, ``on_demand``,
``feature_services``.
"""
