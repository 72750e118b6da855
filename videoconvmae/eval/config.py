"""The multi-view evaluation section of a run config (``eval.*``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    checkpoint: str = ""  # finetuned checkpoint to evaluate
    split: str = "val"  # which annotation to evaluate: train | val
    num_temporal_views: int = 5  # clips along time (K400 5, SSV2 2)
    num_spatial_views: int = 3  # crops along the long side (3)
    aggregation: str = "softmax"  # softmax (mean of per-view probabilities) | logits (mean of logits)
    shard: str = "0/1"  # i/n: this job evaluates the i-th of n disjoint parts of the dataset
    out_dir: str = ""  # where predictions / metrics go; '' = <train.output_dir>/eval
    batch_videos: int = 4  # videos whose views are batched together in one forward
