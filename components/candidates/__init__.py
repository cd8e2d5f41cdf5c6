"""Pre-rankers (transition, SASRec), candidate lists and re-ranking examples, and their validation."""
