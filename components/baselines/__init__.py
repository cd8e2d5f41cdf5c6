"""Baselines scored on the same candidate lists as the re-rankers (SASRec)."""
