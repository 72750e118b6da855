"""The tiny MAE pretrain learns features: a linear probe on its frozen encoder beats the same probe on the same
encoder untrained AND on noise with the pretrained weights' statistics, end to end through the engine on real
synthetic video files (data synth -> pretrain_k400_tiny -> ``videoconvmae features`` -> ``linear_probe``).

The noise arm (every pretrained tensor replaced by Gaussian noise of its own mean and std) is the control the test
must fail on: it has the pretrain's weight scale without its content, so a broken pretrain that still moves the
weights' scale does not pass. The earlier version of this test (finetuning beats random init) passed with noise
too (README): at the CI budget a finetune's margin was conditioning, not features.

What makes the pretrain learn at this budget (in-memory probes, then the engine grid): VideoMAE's decoder depth
(4 blocks, 128 wide; the tiny family's 1 x 64 decoder left the tube-masked loss on the plateau of a predictor that
ignores the input), 960 steps, and clips that move twice the default speed (1-2 px per frame), so that what a
hidden tube shows depends on the motion seen in the visible ones.

Bars from ``bench/transfer_grid.py`` (2 workers; 17 cells on two CPUs: seeds 0-3 at 1 thread and 0-2 at 2 on one,
seeds 0-4 at 1 and 2 threads on an AMD EPYC; min / median / max of the probe's val top-1 over 192 clips): pretrained
43.8 / 51.6 / 62.0%, untrained 20.8 / 32.3 / 37.5%, noise 30.2 / 32.8 / 36.5%; pretrained over untrained 13.5 /
21.9 / 30.7 points, over noise 7.3 / 19.8 / 28.6; chance 16.7%. The bars (33.3%, 5 points over untrained, 3 over
noise) sit 10.5, 8.5 and 4.3 points below the worst cells. The noise margin is the thin one: other noise draws
(seeds 1-3 beside 12345, the AMD cells) probe 29.2-40.1%, and the pretrained probe beats each of those 40 draws by
4.2 points at the least (``transfer_grid.py --noise-seeds``): the bar is not an artefact of one draw. A 1-epoch
(12-step) pretrain fails the bars in 8 of the 10 AMD cells (``--pretrain-epochs 1``); it passes at seed 0 only, so
the test runs seed 1 (``TEST_SEED``). A pretrain whose masking leaks (``--sabotage leak``) passes them too (54.2 /
33.3 / 39.1 at seed 0): leaks are the exact leak tests' job (test_models_convmae.py), not this one's.
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

PRETRAIN_EPOCHS = 80  # x 12 steps of batch 16 (192 train clips): 960 steps
FINETUNE_EPOCHS = 20  # bench/transfer_grid.py's finetune arms (not run by this test)
VAL_PER_CLASS = 32  # 192 val clips: one clip is 0.52 points
SPEED = (1.0, 2.0)  # pixels per frame: twice the default, so that the tube-masked loss depends on the motion
# VideoMAE's decoder depth (4) at twice the tiny width: with the tiny family's 1 x 64 decoder the tube-masked loss
# stayed on the plateau of a predictor that ignores the input
DECODER = ("model.decoder_depth=4", "model.decoder_dim=128", "model.decoder_heads=4")
CHANCE = 100 / SynthSpec().num_classes
MIN_PRETRAINED = 2 * CHANCE  # probe of the pretrained encoder at least this (33.3%)
MIN_OVER_NOISE = 3.0  # points above the probe of noise with the pretrained weights' statistics
MIN_OVER_UNTRAINED = 5.0  # points above the probe of the same encoder untrained
# Every seed of the grid passes the bars; at seed 1 a 1-epoch (12-step) pretrain also FAILS them (30.7 / 32.3 / 37.0%),
# which at seed 0 it did not (43.2 / 33.3 / 31.2%): the run CI makes tells 960 steps from a few.
TEST_SEED = 1
QUIET = ["train.progress=false", "train.tensorboard=false", "train.log_every_steps=50", "train.ckpt_every_steps=100000"]


def _k400(root: Path, out: Path, *extra: str) -> list[str]:
    k = root / "k400"
    return [f"data.root={k}", f"data.train_annotation={k}/train.csv", f"data.val_annotation={k}/val.csv",
            f"train.output_dir={out}", *QUIET, *extra]


def write_transfer_data(root: Path, workers: int = 2) -> Path:
    return write_synthetic_dataset(root, val_per_class=VAL_PER_CLASS, speed=SPEED, workers=workers,
                                   datasets=("k400",))


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
    """What an arm starts from, after ``pretrain`` in ``work``: ``pretrained`` its weights.pt,
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


def pretrain(root: Path, work: Path, seed: int = 0, num_workers: int = 2, pretrain_epochs: int = PRETRAIN_EPOCHS,
             extra: tuple[str, ...] = ()) -> Path:
    """pretrain_k400_tiny with the test's decoder and budget (``extra``: more overrides) -> its weights.pt."""
    run_task(load_config("pretrain_k400_tiny", _k400(root, work / "pretrain", f"optim.epochs={pretrain_epochs}",
                                                     f"train.seed={seed}", f"data.num_workers={num_workers}",
                                                     *DECODER, *extra)))
    return work / "pretrain" / "weights.pt"


def run_transfer(root: Path, work: Path, seed: int = 0, num_workers: int = 2, arms=("pretrained", "random"),
                 finetune_epochs: int = FINETUNE_EPOCHS) -> dict[str, float]:
    """After ``pretrain``: one finetune_k400_tiny per arm (``arm_weights``) -> ``{arm: val top-1 %}``, same recipe,
    budget and seed."""
    common = [f"train.seed={seed}", f"data.num_workers={num_workers}"]
    top1 = {}
    for name in arms:
        result = run_task(load_config("finetune_k400_tiny", _k400(
            root, work / f"finetune_{name}", f"model.pretrained={arm_weights(work, name, seed)}",
            f"optim.epochs={finetune_epochs}", f"train.eval_every_epochs={finetune_epochs}", *common)))
        assert result["status"] == "completed" and result["val_count"] == VAL_PER_CLASS * SynthSpec().num_classes
        top1[name] = result["val_acc1"]
    return top1


def probe_encoder(root: Path, work: Path, weights: Path | str, name: str, num_workers: int = 2) -> float:
    """``videoconvmae features`` of the train and val clips (one centre view) for the frozen encoder of
    ``weights`` (into ``work``/features_{name}_{split}), then ``linear_probe`` -> val top-1 %."""
    splits = []
    for split in ("train", "val"):
        out = work / f"features_{name}_{split}"
        assert main(["features", str(weights), str(root / "k400" / f"{split}.csv"), "--out", str(out),
                     "eval.num_temporal_views=1", "eval.num_spatial_views=1", f"data.num_workers={num_workers}",
                     "train.progress=false"]) == 0
        feats, rows = read_features(out)
        splits.append((feats, [int(r["label"]) for r in rows]))
    return linear_probe(*splits)


def probe_transfer(root: Path, work: Path, seed: int = 0, num_workers: int = 2,
                   arms=("pretrained", "initial")) -> dict[str, float]:
    """After ``pretrain``: ``probe_encoder`` of each arm's frozen encoder (``arm_weights``) -> ``{arm: val top-1
    %}``."""
    return {name: probe_encoder(root, work, arm_weights(work, name, seed), name, num_workers) for name in arms}


def probe_holds(top1: dict[str, float]) -> bool:
    """The test's bars on ``probe_transfer``'s result (arms pretrained, initial, noise)."""
    return (top1["pretrained"] >= MIN_PRETRAINED and top1["pretrained"] >= top1["noise"] + MIN_OVER_NOISE
            and top1["pretrained"] >= top1["initial"] + MIN_OVER_UNTRAINED)


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, float]:
    root = write_transfer_data(tmp_path_factory.mktemp("synth"))
    work = tmp_path_factory.mktemp("transfer")
    pretrain(root, work, seed=TEST_SEED)
    top1 = probe_transfer(root, work, seed=TEST_SEED, arms=("pretrained", "initial", "noise"))
    print(f"\nlinear probe val top-1: pretrained {top1['pretrained']:.1f}%, untrained {top1['initial']:.1f}%, "
          f"noise {top1['noise']:.1f}%")
    return top1


def test_probe_of_the_pretrained_encoder_beats_chance_clearly(probes):
    assert probes["pretrained"] >= MIN_PRETRAINED, f"pretrained {probes['pretrained']:.1f}% vs chance {CHANCE:.1f}%"


def test_probe_of_the_pretrained_encoder_beats_the_untrained_encoder(probes):
    assert probes["pretrained"] >= probes["initial"] + MIN_OVER_UNTRAINED, (
        f"pretrained {probes['pretrained']:.1f}% vs untrained {probes['initial']:.1f}%")


def test_probe_of_the_pretrained_encoder_beats_noise_of_its_statistics(probes):
    assert probes["pretrained"] >= probes["noise"] + MIN_OVER_NOISE, (
        f"pretrained {probes['pretrained']:.1f}% vs noise {probes['noise']:.1f}%")
