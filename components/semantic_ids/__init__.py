"""Semantic IDs: item text -> sentence embedding -> residual k-means codes + a uniqueness level."""
