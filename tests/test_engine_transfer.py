"""Does pretraining transfer? The tiny presets end to end through the engine on real synthetic video files:
MAE-pretrain the tiny VideoConvMAE, finetune it, and finetune the same model from random init with the same
recipe, budget and seed. The pretrained run must beat chance clearly and beat random init.

Measured with these budgets (2 CPU cores, 3 min for the whole file), two runs: from the pretrained encoder
66.7% and 59.4% val top-1, from random init 22.9% and 26.0% (6 classes, chance 16.7%). With the presets'
full budgets (tools/demo.py), three runs: 83.3% vs 27.1%, 83.3% vs 54.2%, 81.2% vs 43.8%.
"""

import pytest

from videoconvmae.config import load_config
from videoconvmae.data.synth import SynthSpec, write_synthetic_dataset
from videoconvmae.engine.tasks import run_task

pytestmark = pytest.mark.slow

PRETRAIN_EPOCHS = 40  # x 12 steps of batch 16 (192 train clips)
FINETUNE_EPOCHS = 20  # short on purpose: where a good initialisation shows most
QUIET = ["train.progress=false", "train.tensorboard=false", "train.log_every_steps=50", "train.ckpt_every_steps=100000"]


def k400(root, out, *extra):
    k = root / "k400"
    return [f"data.root={k}", f"data.train_annotation={k}/train.csv", f"data.val_annotation={k}/val.csv",
            f"train.output_dir={out}", *QUIET, *extra]


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    """(pretrained top-1, random-init top-1, chance) in %, from one pretrain and two finetunes."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("synth"), val_per_class=16, workers=2)
    pre_dir = tmp_path_factory.mktemp("pretrain")
    run_task(load_config("pretrain_k400_tiny", k400(root, pre_dir, f"optim.epochs={PRETRAIN_EPOCHS}")))
    top1 = {}
    for name, weights in (("pretrained", pre_dir / "weights.pt"), ("random", "")):
        out = tmp_path_factory.mktemp(f"finetune_{name}")
        result = run_task(load_config("finetune_k400_tiny", k400(
            root, out, f"model.pretrained={weights}", f"optim.epochs={FINETUNE_EPOCHS}",
            f"train.eval_every_epochs={FINETUNE_EPOCHS}")))
        assert result["status"] == "completed" and result["val_count"] == 96
        top1[name] = result["val_acc1"]
    print(f"\nfinetune val top-1: pretrained {top1['pretrained']:.1f}%, random init {top1['random']:.1f}%")
    return top1["pretrained"], top1["random"], 100 / SynthSpec().num_classes


def test_finetuning_a_pretrained_encoder_beats_chance_clearly(transfer):
    pretrained, _, chance = transfer
    assert pretrained >= 2.5 * chance, f"pretrained {pretrained:.1f}% vs chance {chance:.1f}%"


def test_finetuning_a_pretrained_encoder_beats_random_init(transfer):
    pretrained, random_init, _ = transfer
    assert pretrained >= random_init + 15, f"pretrained {pretrained:.1f}% vs random init {random_init:.1f}%"
