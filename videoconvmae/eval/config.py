"""The multi-view evaluation section of a run config (``eval.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from videoconvmae.eval.sharding import parse_shard


@dataclass
class EvalConfig:
    checkpoint: str = ""  # finetuned checkpoint ({"model", "config"}: a training checkpoint or weights.pt)
    use_ema: bool = False  # evaluate the checkpoint's "ema" weights instead of "model"
    split: str = "val"  # which annotation to evaluate: train | val
    num_temporal_views: int | None = None  # clips along time; None = paper protocol (k400 5, ssv2 2)
    num_spatial_views: int = 3  # crops along the long side (3); 1 = one centre crop
    aggregation: str = "softmax"  # softmax (mean of per-view probabilities) | logits (mean of logits)
    shard: str = "0/1"  # i/n: this job evaluates the i-th of n disjoint parts of the dataset
    shard_mode: str = "contiguous"  # contiguous (blocks of the annotation order) | strided (every n-th item)
    out_dir: str = ""  # where predictions / metrics go; '' = <train.output_dir>/eval[/shard-i-of-n]
    batch_videos: int = 4  # videos whose views are batched together in one forward
    image_interpolation: str = "bicubic"  # image mode resize filter (PIL): bicubic | bilinear
    confusion_max_classes: int = 1000  # draw the confusion-matrix PNG only up to this many classes (0 = never)

    def __post_init__(self) -> None:
        parse_shard(self.shard)
        if self.aggregation not in ("softmax", "logits"):
            raise ValueError(f"eval.aggregation: expected softmax|logits, got {self.aggregation!r}")
        if self.shard_mode not in ("contiguous", "strided"):
            raise ValueError(f"eval.shard_mode: expected contiguous|strided, got {self.shard_mode!r}")
        if self.num_temporal_views is not None and self.num_temporal_views < 1:
            raise ValueError(f"eval.num_temporal_views: expected >= 1 or null, got {self.num_temporal_views}")
        if self.num_spatial_views < 1:
            raise ValueError(f"eval.num_spatial_views: expected >= 1, got {self.num_spatial_views}")
        if self.batch_videos < 1:
            raise ValueError(f"eval.batch_videos: expected >= 1, got {self.batch_videos}")
        if self.image_interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"eval.image_interpolation: expected bicubic|bilinear, got {self.image_interpolation!r}")
