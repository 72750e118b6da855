"""Finetuning from the tiny MAE pretrain beats the same finetune from the default random init, end to end through
the engine on real synthetic video files (pretrain_k400_tiny -> finetune_k400_tiny twice: same recipe, budget,
seed). A PIPELINE check, not proof that pretraining learned features: the finetune from ``noise_like`` weights
(every pretrained tensor replaced by Gaussian noise of its own mean and std) passes the same bars
(bench/transfer_grid.py's noise column). What the margin measures is conditioning: from the default init the
pooled features are the same for every clip (their across-clip share of energy rounds to 0.0%), and such finetunes
often sit at chance for all 240 steps; the pretrain's weight scale avoids that, noise of that scale too.

Bars from ``bench/transfer_grid.py`` (2 workers; seeds 0-4 at 1 thread, 0-2 at 2 threads; min / median / max):
pretrained 72.9 / 79.2 / 81.2%, noise 65.6 / 77.6 / 82.3%, random init 16.7 / 33.3 / 50.0%, margin
27.1 / 40.1 / 63.5 points; chance 16.7%. The bars sit 31 and 12 points below the worst cell.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from videoconvmae.cli import main
from videoconvmae.config import from_dict, load_config
from videoconvmae.data.synth import SynthSpec, write_synthetic_dataset
from videoconvmae.engine.tasks import run_task
from videoconvmae.eval.features import linear_probe, read_features
from videoconvmae.models import build_model

pytestmark = pytest.mark.slow

PRETRAIN_EPOCHS = 40  # x 12 steps of batch 16 (192 train clips)
FINETUNE_EPOCHS = 20  # short on purpose: where a good initialisation shows most
VAL_PER_CLASS = 16  # 96 val clips: one clip is 1.04 points
CHANCE = 100 / SynthSpec().num_classes
MIN_PRETRAINED = 2.5 * CHANCE  # pretrained top-1 at least this (41.7%); worst cell measured 72.9%
MIN_MARGIN = 15.0  # pretrained top-1 at least this many points above random init; worst cell 27.1
QUIET = ["train.progress=false", "train.tensorboard=false", "train.log_every_steps=50", "train.ckpt_every_steps=100000"]


def _k400(root: Path, out: Path, *extra: str) -> list[str]:
    k = root / "k400"
    return [f"data.root={k}", f"data.train_annotation={k}/train.csv", f"data.val_annotation={k}/val.csv",
            f"train.output_dir={out}", *QUIET, *extra]


def write_transfer_data(root: Path, workers: int = 2) -> Path:
    return write_synthetic_dataset(root, val_per_class=VAL_PER_CLASS, workers=workers, datasets=("k400",))


def noise_like(weights: Path, out: Path, seed: int = 12345) -> Path:
    """Every floating tensor of a weights.pt replaced by Gaussian noise of its own mean and std -> ``out``: the
    pretrain's scale without its content (the control the test must fail on)."""
    state = torch.load(weights, weights_only=True)
    gen = torch.Generator().manual_seed(seed)

    def noise(v: torch.Tensor) -> torch.Tensor:
        return torch.randn(v.shape, generator=gen) * v.float().std().nan_to_num(0.02) + v.float().mean()

    state["model"] = {k: noise(v).to(v.dtype) if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, out)
    return out


def initial_weights(weights: Path, out: Path, seed: int) -> Path:
    """A weights.pt of the pretrain model as pretraining STARTS (a fresh init of its saved config) -> ``out``."""
    state = torch.load(weights, weights_only=True)
    torch.manual_seed(seed)
    state["model"] = build_model(from_dict(state["config"]).model, "pretrain").state_dict()
    torch.save(state, out)
    return out


def arm_weights(work: Path, arm: str, seed: int) -> Path | str:
    """What an arm starts from, after ``run_transfer``'s pretrain in ``work``: ``pretrained`` its weights.pt,
    ``noise`` ``noise_like`` them, ``initial`` ``initial_weights`` (the same encoder untrained), ``random`` ''
    (a finetune's default init)."""
    pretrained = work / "pretrain" / "weights.pt"
    if arm == "pretrained":
        return pretrained
    if arm == "noise":
        return noise_like(pretrained, work / "noise_weights.pt")
    if arm == "initial":
        return initial_weights(pretrained, work / "init.pt", seed)
    if arm == "random":
        return ""
    raise ValueError(f"arm: expected pretrained | noise | initial | random, got {arm!r}")


def run_transfer(root: Path, work: Path, seed: int = 0, num_workers: int = 2, arms=("pretrained", "random"),
                 pretrain_epochs: int = PRETRAIN_EPOCHS, finetune_epochs: int = FINETUNE_EPOCHS) -> dict[str, float]:
    """One pretrain, then one finetune per arm -> ``{arm: val top-1 %}``, same recipe, budget and seed.

    Arms: ``arm_weights``'s (``noise`` is bench/transfer_grid.py's control).
    """
    common = [f"train.seed={seed}", f"data.num_workers={num_workers}"]
    run_task(load_config("pretrain_k400_tiny", _k400(root, work / "pretrain", f"optim.epochs={pretrain_epochs}",
                                                     *common)))
    top1 = {}
    for name in arms:
        result = run_task(load_config("finetune_k400_tiny", _k400(
            root, work / f"finetune_{name}", f"model.pretrained={arm_weights(work, name, seed)}",
            f"optim.epochs={finetune_epochs}", f"train.eval_every_epochs={finetune_epochs}", *common)))
        assert result["status"] == "completed" and result["val_count"] == VAL_PER_CLASS * SynthSpec().num_classes
        top1[name] = result["val_acc1"]
    return top1


def probe_transfer(root: Path, work: Path, seed: int = 0, num_workers: int = 2,
                   arms=("pretrained", "initial")) -> dict[str, float]:
    """After ``run_transfer``: ``videoconvmae features`` of the train and val clips (one centre view) for each
    arm's frozen encoder (``arm_weights``), then ``linear_probe`` -> ``{arm: val top-1 %}``."""
    top1 = {}
    for name in arms:
        weights, splits = arm_weights(work, name, seed), []
        for split in ("train", "val"):
            out = work / f"features_{name}_{split}"
            assert main(["features", str(weights), str(root / "k400" / f"{split}.csv"), "--out", str(out),
                         "eval.num_temporal_views=1", "eval.num_spatial_views=1", f"data.num_workers={num_workers}",
                         "train.progress=false"]) == 0
            feats, rows = read_features(out)
            splits.append((feats, [int(r["label"]) for r in rows]))
        top1[name] = linear_probe(*splits)
    return top1


def transfer_holds(top1: dict[str, float]) -> bool:
    return top1["pretrained"] >= MIN_PRETRAINED and top1["pretrained"] >= top1["random"] + MIN_MARGIN


@pytest.fixture(scope="module")
def transfer(tmp_path_factory) -> dict[str, float]:
    root = write_transfer_data(tmp_path_factory.mktemp("synth"))
    top1 = run_transfer(root, tmp_path_factory.mktemp("transfer"))
    print(f"\nfinetune val top-1: pretrained {top1['pretrained']:.1f}%, random init {top1['random']:.1f}%")
    return top1


def test_finetuning_a_pretrained_encoder_beats_chance_clearly(transfer):
    assert transfer["pretrained"] >= MIN_PRETRAINED, f"pretrained {transfer['pretrained']:.1f}% vs chance {CHANCE:.1f}%"


def test_finetuning_a_pretrained_encoder_beats_random_init(transfer):
    assert transfer["pretrained"] >= transfer["random"] + MIN_MARGIN, (
        f"pretrained {transfer['pretrained']:.1f}% vs random init {transfer['random']:.1f}%")
