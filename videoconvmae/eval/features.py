"""``run_features(cfg)``: per-video embeddings of a checkpoint's encoder, sharded like the evaluation.

The same loop as ``run_eval`` (``multiview.run_sharded``: this job's ``eval.shard``, split over DDP ranks, one
decode per video with every T x S view cut from it), with the classifier's pooled features
(``forward_features``: mean over the stage-3 tokens, then ``fc_norm``) instead of its logits. The encoder comes
from any checkpoint of ours (pretrain, finetune, linprobe; training checkpoint or exported weights) or an
official one: ``load_pretrained`` maps it onto ``{arch}_cls``; for a pretrain checkpoint ``fc_norm`` is the
fresh LayerNorm (no affine change), as a linear probe starts from.

Files in ``output_dir(cfg)``: ``features.npy`` float32 [N, C] (mean over the views), ``index.csv`` (row, video_id,
label, path) in annotation order, ``features.json`` (checkpoint hash, config hash, views, shard, unreadable items),
optionally ``views.npy`` [N, T*S, C] (temporal-major) and ``clips.npy`` [N, T, C] (mean over the spatial views).
Shards of one extraction (``contiguous``) concatenate, in shard order, to the unsharded result.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from videoconvmae.artifacts import atomic_write, write_csv
from videoconvmae.config import Config
from videoconvmae.engine.checkpoint import load_task_model
from videoconvmae.eval.multiview import (
    eval_inputs,
    eval_run_info,
    in_order,
    num_views,
    output_dir,
    run_sharded,
)
from videoconvmae.eval.report import write_json
from videoconvmae.eval.sharding import parse_shard
from videoconvmae.models.config import ModelConfig

FEATURES_NPY, INDEX_CSV, FEATURES_JSON = "features.npy", "index.csv", "features.json"


class PooledFeatures(torch.nn.Module):
    """``forward(x) = classifier.forward_features(x)``: [N, C3], what ``predict`` takes as a model."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.forward_features(x)


def run_features(cfg: Config, per_view: bool = False, per_clip: bool = False) -> dict:
    """Embed every video of ``cfg.eval.split`` in this job's shard; returns the summary written to features.json."""
    model_cfg, records, _ = eval_inputs(cfg, "features: eval.checkpoint")

    def build(device: torch.device) -> torch.nn.Module:
        encoder = load_task_model(cfg.eval.checkpoint, model_cfg, "features", use_ema=cfg.eval.use_ema,
                                  key="features: eval.checkpoint")
        return PooledFeatures(encoder).to(device)

    def write(parts: list, job_part: list[int]) -> dict:
        return _write(cfg, model_cfg, records, parts, job_part, per_view, per_clip)

    return run_sharded(cfg, records, build, None, write)


def _write(cfg: Config, model_cfg: ModelConfig, records: list, parts: list, job_part: list[int], per_view: bool,
           per_clip: bool) -> dict:
    t, s = num_views(cfg)
    positions, views, failed = in_order(parts, job_part, (t * s, 0))
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    files = {"features": _save(out / FEATURES_NPY, views.mean(axis=1))}
    if per_view:
        files["views"] = _save(out / "views.npy", views)
    if per_clip:
        files["clips"] = _save(out / "clips.npy", views.reshape(len(views), t, s, -1).mean(axis=2))
    files["index"] = str(write_csv(out / INDEX_CSV, [["row", "video_id", "label", "path"],
                                                     *([row, records[p].video_id, records[p].label, records[p].path]
                                                       for row, p in enumerate(positions))]))
    i, n = parse_shard(cfg.eval.shard)
    summary = {"num_videos": len(positions), "dim": int(views.shape[-1]), "num_unreadable": len(failed),
               "num_assigned": len(job_part),
               "unreadable": [{"video_id": records[p].video_id, "path": str(records[p].path), "error": err}
                              for p, err in failed],
               "run": eval_run_info(cfg, model_cfg, len(records)), "shard": {"index": i, "count": n},
               "features": "encoder forward_features (mean over stage-3 tokens, fc_norm), mean over the views",
               "files": files, "out_dir": str(out)}
    files["metadata"] = str(write_json(out / FEATURES_JSON, summary))
    return summary


def _save(path: Path, array: np.ndarray) -> str:
    return str(atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array, dtype=np.float32))))


def read_features(folder: str | Path) -> tuple[np.ndarray, list[dict]]:
    """(features [N, C], index rows) of a ``features`` output folder."""
    folder = Path(folder)
    with open(folder / INDEX_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.load(folder / FEATURES_NPY), rows


def linear_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], l2: float = 1e-3,
                 max_iter: int = 500) -> float:
    """Val top-1 % of a multinomial logistic regression on frozen features: ``train`` / ``val`` are
    (features [N, C], labels [N]) as ``read_features`` gives them; features standardised with the train mean / std,
    ``l2`` * ||W||^2 added to the mean cross-entropy, full-batch L-BFGS in float64 (deterministic, no lr to tune).

    The quick probe of a ``features`` output; the SGD probe with MAE's recipe (BatchNorm, LARS) is ``linprobe``.
    """
    (x, y), (xv, yv) = train, val
    x, xv = (torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (x, xv))
    y, yv = (torch.as_tensor(np.asarray(a), dtype=torch.long) for a in (y, yv))
    if x.ndim != 2 or xv.ndim != 2 or x.shape[1] != xv.shape[1] or len(x) != len(y) or len(xv) != len(yv):
        raise ValueError(f"linear_probe: expected train / val features [N, C] with one label each, got "
                         f"{list(x.shape)} / {list(xv.shape)} features and {len(y)} / {len(yv)} labels")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x, xv = (x - mean) / std, (xv - mean) / std
    num_classes = int(max(y.max(), yv.max())) + 1
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return 100.0 * float(((xv @ weight + bias).argmax(1) == yv).double().mean())
