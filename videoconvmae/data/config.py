"""The data section of a run config (``data.*``): dataset, decoding, clip sampling, augmentation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    dataset: str = "k400"  # k400 | ssv2 | imagefolder: how annotations are read and clips sampled
    root: str = ""  # folder the annotation's video / image paths are relative to
    train_annotation: str = ""  # K400 CSV, SSV2 train.json, `<path> <label>` list, or image folder
    val_annotation: str = ""  # same formats, validation split
    labels_file: str = ""  # SSV2 labels.json (name -> id; default: next to the JSON); K400: optional fixed names
    k400_split_dir: str = ""  # K400 CSV: sub-folder of root holding the videos; '' = the CSV's split column
    k400_label_dirs: bool = False  # K400 CSV: videos sit in <split dir>/<label>/ instead of <split dir>/
    k400_video_ext: str = ".mp4"  # K400 CSV: file extension of <youtube_id>_<start>_<end>
    ssv2_video_ext: str = ".webm"  # SSV2 JSON: file extension of <id>
    decoder: str = "decord"  # decord | pyav | torchcodec
    num_frames: int = 16  # frames per clip (T)
    sampling: str | None = None  # dense | segment; None = dense for k400 and ssv2 pretraining, segment ssv2 else
    sampling_rate: int | None = None  # dense: frames between samples; None = 4 k400 (16x4), 2 ssv2 (16x2)
    num_segments: int | None = None  # segment: uniform segments, one frame each; None = num_frames
    input_size: int = 224  # crop size fed to the model
    short_side_size: int = 224  # eval: short side resized to this before the spatial crops
    batch_size: int = 8  # clips per process per optimizer micro-step
    num_workers: int = 4  # DataLoader worker processes
    interpolation: str | None = None  # bilinear | bicubic crop resize; None = bicubic images (MAE), bilinear video
    pretrain_crop: str = "multiscale"  # multiscale (VideoMAE scales 1, .875, .75, .66) | rrc
    pretrain_rrc_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])  # pretrain rrc area range (MAE)
    rrc_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # finetune / linprobe crop area range
    rrc_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])  # random resized crop aspect range
    flip: bool | None = None  # train-time horizontal flip; None = off for video pretraining (VideoMAE) and ssv2
    randaug: str = "rand-m7-n4-mstd0.5-inc1"  # timm RandAugment spec for finetuning; '' = off
    reprob: float = 0.25  # random erasing probability (finetuning)
    mixup: float = 0.8  # mixup alpha (finetuning); 0 = off
    cutmix: float = 1.0  # cutmix alpha (finetuning); 0 = off
    label_smoothing: float = 0.1  # label smoothing with mixup / cutmix (finetuning)
    repeated_aug: int = 1  # augmented clips per decoded video (one decode, N clips)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # normalisation mean (RGB)
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])  # normalisation std (RGB)
    max_skip_fraction: float = 0.05  # fail the run when more than this fraction of samples is unreadable
    skip_check_min_reads: int = 500  # reads seen (all processes) before max_skip_fraction is checked mid-epoch
    max_retries: int = 10  # unreadable item: try this many deterministic replacements before failing
    decode_timeout_s: float = 300.0  # a decode still running after this is hung: skipped and counted; 0 = off
    seed: int = 0  # seeds the deterministic choice of replacements for unreadable items
    limit_items: int | None = None  # use only the first N annotation items (debugging)

    def __post_init__(self) -> None:
        for key, value, low in (("batch_size", self.batch_size, 1), ("num_workers", self.num_workers, 0),
                                ("skip_check_min_reads", self.skip_check_min_reads, 0)):
            if value < low:
                raise ValueError(f"data.{key}: expected an integer >= {low}, got {value}")
        if self.limit_items is not None and self.limit_items < 1:
            raise ValueError(f"data.limit_items: expected >= 1 or null, got {self.limit_items}")
