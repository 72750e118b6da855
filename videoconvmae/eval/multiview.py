"""``run_eval(cfg)``: multi-view evaluation of a finetuned checkpoint on one shard of a dataset.

Per video: one decode, all T x S views cut from it and classified in the same forward as the views of
``eval.batch_videos - 1`` other videos, the per-view softmax (or logits) averaged. The job's part of the
dataset (``eval.shard=i/n``) is split again over DDP ranks; rank 0 gathers every rank's predictions and
writes the report (``report.py``). The checkpoint's saved ``model`` section decides the architecture
(the weights fix it); ``data.*`` and ``eval.*`` come from ``cfg``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from videoconvmae.artifacts import saved_config
from videoconvmae.config import Config, from_dict
from videoconvmae.data.sampling import model_input_shape
from videoconvmae.data.transforms import normalize
from videoconvmae.data.views import ViewsDataset, ViewSpec
from videoconvmae.engine.checkpoint import load_task_model
from videoconvmae.engine.distributed import gather_objects
from videoconvmae.engine.tasks import check_modality
from videoconvmae.engine.trainer import autocast_for, check_precision
from videoconvmae.errors import ConfigError
from videoconvmae.eval.metrics import aggregate
from videoconvmae.eval.report import write_report
from videoconvmae.eval.sharding import parse_shard, rank_part, shard_indices
from videoconvmae.models.config import ModelConfig

PAPER_TEMPORAL_VIEWS = {"k400": 5, "ssv2": 2}
# data.* / eval.* fields that cannot change the predictions (augmentation, throughput, error policy); every
# other field goes into the config hash that the shards of one evaluation must share.
NOT_HASHED = {"data": {"train_annotation", "val_annotation", "batch_size", "num_workers", "pretrain_crop",
                       "pretrain_rrc_scale", "rrc_scale", "rrc_ratio", "flip", "randaug", "reprob", "mixup", "cutmix",
                       "label_smoothing", "repeated_aug", "max_skip_fraction", "max_retries", "decode_timeout_s",
                       "seed"},
              "eval": {"checkpoint", "shard", "out_dir", "batch_videos", "confusion_max_classes"}}


def num_views(cfg: Config) -> tuple[int, int]:
    """(T, S): ``eval.num_temporal_views`` or the paper's count for the dataset; images have T = 1."""
    if cfg.data.dataset == "imagefolder":
        return 1, cfg.eval.num_spatial_views
    t = cfg.eval.num_temporal_views or PAPER_TEMPORAL_VIEWS.get(cfg.data.dataset, 5)
    return t, cfg.eval.num_spatial_views


def view_spec(cfg: Config) -> ViewSpec:
    return ViewSpec.of(cfg.data, "eval", *num_views(cfg), image_interpolation=cfg.eval.image_interpolation)


def protocol_text(cfg: Config) -> str:
    t, s = num_views(cfg)
    if cfg.data.dataset == "imagefolder":
        return "single centre crop" if s == 1 else f"{s} crops, {cfg.eval.aggregation} mean"
    return f"{t}x{s} views ({t} temporal x {s} spatial), {cfg.eval.aggregation} mean"


# ---------------------------------------------------------------------------------------------- checkpoint
def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def eval_inputs(cfg: Config, key: str) -> tuple[ModelConfig, list, list[str]]:
    """What eval and ``features`` start from: the model section (the checkpoint's own: the weights fix the
    architecture; else ``cfg.model``) and the records and class names of ``cfg.eval.split``."""
    from videoconvmae.data.records import load_records

    if cfg.data.input_size > cfg.data.short_side_size:
        raise ConfigError(f"data.input_size={cfg.data.input_size} > data.short_side_size={cfg.data.short_side_size}:"
                          " the test crops are cut from frames resized to the short side, so it must be >= the crop")
    saved = saved_config(cfg.eval.checkpoint, key)
    model_cfg = from_dict(saved).model if saved else cfg.model
    # Evaluation loads finetuned weights itself: never re-initialise from the pretraining checkpoint.
    model_cfg = dataclasses.replace(model_cfg, pretrained="")
    check_modality(cfg.data, model_cfg)
    asked = dataclasses.replace(cfg.model, pretrained="")
    if saved and model_cfg != asked:
        differ = [f.name for f in dataclasses.fields(model_cfg) if getattr(model_cfg, f.name) != getattr(asked, f.name)]
        print(f"eval: model.* comes from the checkpoint's saved config ({model_cfg.arch}); the run config's "
              f"differing model.{', model.'.join(differ)} is not used")
    return (model_cfg, *load_records(cfg.data, cfg.eval.split))


def config_hash(cfg: Config, model_cfg: ModelConfig) -> str:
    """Fingerprint of everything that changes the predictions (shards of one evaluation must share it)."""
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in NOT_HASHED["data"]}
    data["annotation"] = cfg.data.val_annotation if cfg.eval.split == "val" else cfg.data.train_annotation
    ev = {k: v for k, v in dataclasses.asdict(cfg.eval).items() if k not in NOT_HASHED["eval"]}
    ev["views"] = list(num_views(cfg))
    blob = json.dumps({"data": data, "eval": ev, "model": dataclasses.asdict(model_cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- the loop
def output_dir(cfg: Config) -> Path:
    i, n = parse_shard(cfg.eval.shard)
    base = Path(cfg.eval.out_dir) if cfg.eval.out_dir else Path(cfg.train.output_dir) / "eval"
    return base / f"shard-{i}-of-{n}" if n > 1 else base


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device, aggregation: str | None,
            mean: list[float], std: list[float], precision: str = "fp32",
            progress: bool = False, unit: str = "video") -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """(positions, aggregated scores [N, K], [(position, error)] of unreadable items) over ``loader``.

    ``aggregation=None`` keeps every view: scores [N, V, K] (views temporal-major, as ``ViewsDataset``)."""
    from tqdm import tqdm

    check_precision(precision, device)  # the training rule: fp16 needs CUDA (never silently bf16)
    positions: list[int] = []
    scores: list[torch.Tensor] = []
    failed: list[tuple[int, str]] = []
    bar = tqdm(total=len(loader.dataset), unit=unit, dynamic_ncols=True, disable=not progress)  # rate + ETA
    for items in loader:
        ok = [it for it in items if it["views"] is not None]
        failed += [(it["position"], it["error"]) for it in items if it["views"] is None]
        if ok:
            v = ok[0]["views"].shape[0]
            x = normalize(torch.cat([it["views"] for it in ok]).to(device, non_blocking=True), mean, std)
            with autocast_for(precision, device):
                logits = model(x)
            per_view = logits.float().view(len(ok), v, -1)
            scores.append((per_view if aggregation is None else aggregate(per_view, aggregation)).cpu())
            positions += [it["position"] for it in ok]
        bar.update(len(items))
        if failed:
            bar.set_postfix(unreadable=len(failed), refresh=False)
    bar.close()
    k = scores[0].shape[1] if scores else 0
    return positions, (torch.cat(scores).numpy() if scores else np.zeros((0, k), np.float32)), failed


def run_eval(cfg: Config) -> dict:
    """Evaluate ``cfg.eval.checkpoint`` on this job's shard of ``cfg.data``; the summary (metrics + paths).

    Every rank returns the same summary; rank 0 writes the files into ``output_dir(cfg)``.
    """
    model_cfg, records, class_names = eval_inputs(cfg, "eval.checkpoint")

    def build(device: torch.device) -> torch.nn.Module:
        return load_task_model(cfg.eval.checkpoint, model_cfg, "eval", num_classes=len(class_names),
                               input_shape=model_input_shape(cfg.data, "eval"), use_ema=cfg.eval.use_ema).to(device)

    def write(parts: list, job_part: list[int]) -> dict:
        return _write(cfg, parts, records, class_names, model_cfg, job_part)

    return run_sharded(cfg, records, build, cfg.eval.aggregation, write)


def run_sharded(cfg: Config, records: list, build: Callable[[torch.device], torch.nn.Module],
                aggregation: str | None, write: Callable[[list, list[int]], dict]) -> dict:
    """The part of the evaluation loop that eval and ``features`` share: this job's shard (``eval.shard``) split
    over DDP ranks, one decode per video (``ViewsDataset``), the model ``build(device)`` on all its views
    (``predict``), every rank's part gathered; rank 0 calls ``write(parts, job_part)``, every rank returns its
    result. A process group this call joined is ended here."""
    from videoconvmae.engine.distributed import broadcast_object, init_distributed

    shard_i, shard_n = parse_shard(cfg.eval.shard)
    was_initialised = dist.is_initialized()
    info = init_distributed(cfg.train.dist_backend, cfg.train.device)
    try:
        job_part = shard_indices(len(records), shard_i, shard_n, cfg.eval.shard_mode)
        mine = rank_part(job_part, info.rank, info.world_size, cfg.eval.shard_mode)
        model = build(info.device)
        if cfg.train.compile:
            model = torch.compile(model)
        loader = DataLoader(ViewsDataset(records, mine, view_spec(cfg)), batch_size=cfg.eval.batch_videos,
                            shuffle=False, num_workers=cfg.data.num_workers, collate_fn=list,
                            pin_memory=info.device.type == "cuda")  # a batch: the items as a list
        part = predict(model, loader, info.device, aggregation, cfg.data.mean, cfg.data.std,
                       cfg.train.precision, progress=cfg.train.progress and info.is_main,
                       unit="image" if cfg.data.dataset == "imagefolder" else "video")
        parts = gather_objects(part)
        return broadcast_object(write(parts, job_part) if info.is_main else None)
    finally:
        if not was_initialised and dist.is_initialized():
            dist.destroy_process_group()


def in_order(parts: list, job_part: list[int], width: tuple[int, ...]) -> tuple[list[int], np.ndarray, list]:
    """Every rank's ``(positions, scores, failed)`` -> one list in annotation order; checks that together they
    cover ``job_part`` exactly once. ``width``: the shape of one item's scores (for an empty shard)."""
    positions = [p for pos, _, _ in parts for p in pos]
    scores = np.concatenate([s for _, s, _ in parts if len(s)]) if positions else np.zeros((0, *width), np.float32)
    order = np.argsort(positions, kind="stable")  # annotation order, whatever the rank split was
    positions = [positions[j] for j in order]
    scores = scores[order] if len(order) else scores
    failed = sorted(f for _, _, fs in parts for f in fs)
    if sorted(positions + [p for p, _ in failed]) != sorted(job_part):
        raise RuntimeError("eval: the ranks' results do not cover this shard exactly once (internal error)")
    return positions, scores, failed


def eval_run_info(cfg: Config, model_cfg: ModelConfig, num_total: int) -> dict:
    """What every shard of one evaluation (or feature extraction) must share."""
    t, s = num_views(cfg)
    return {"mode": "image" if cfg.data.dataset == "imagefolder" else "video", "dataset": cfg.data.dataset,
            "split": cfg.eval.split, "protocol": protocol_text(cfg), "views": [t, s],
            "aggregation": cfg.eval.aggregation, "checkpoint": str(cfg.eval.checkpoint),
            "checkpoint_sha256": file_sha256(cfg.eval.checkpoint), "config_hash": config_hash(cfg, model_cfg),
            "num_total": num_total, "shard_mode": cfg.eval.shard_mode}


def _write(cfg: Config, parts: list, records: list, class_names: list[str], model_cfg: ModelConfig,
           job_part: list[int]) -> dict:
    positions, scores, failed = in_order(parts, job_part, (len(class_names),))
    shard = parse_shard(cfg.eval.shard)
    run = eval_run_info(cfg, model_cfg, len(records))
    unreadable = [{"video_id": records[p].video_id, "path": str(records[p].path), "error": err} for p, err in failed]
    summary = write_report(
        output_dir(cfg), video_ids=[records[p].video_id for p in positions],
        labels=np.array([records[p].label for p in positions], dtype=np.int64), scores=scores,
        class_names=class_names, unreadable=unreadable, run=run, shard={"index": shard[0], "count": shard[1]},
        confusion_max_classes=cfg.eval.confusion_max_classes)
    summary["out_dir"] = str(output_dir(cfg))
    return summary
