"""Multi-view evaluation: view placement, one decode per video, aggregation, sharding, merge."""
