"""Baselines scored on the same candidate lists as the re-rankers (the SASRec model of
``components.candidates.sasrec``, as a Table 1 row)."""
