"""MLflow at the edge: runs per recipe and stage, registered models with lineage, promotion gates.

Nothing else in ``components`` imports MLflow; flows call these functions after a stage's pure
function has returned its URIs and metrics.
"""
