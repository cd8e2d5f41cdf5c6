"""Leave-one-out splits, the transition pre-ranker and candidate lists (re-ranking examples)."""
