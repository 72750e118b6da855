"""Recipes (FIDELITY.md): each base preset resolves to the upstream script it names in its header; the lr
schedule's bounds scale with the batch as VideoMAE's."""

from __future__ import annotations

import pytest
import torch

from videoconvmae.config import find_preset, load_config
from videoconvmae.data.sampling import clip_sampling
from videoconvmae.data.transforms import flip_enabled
from videoconvmae.engine.config import OptimConfig
from videoconvmae.engine.optim import build_scheduler, plan_lr


def test_scaled_lr_bounds_follow_videomae():
    """run_mae_pretraining.py: lr, min_lr and warmup_lr are all multiplied by total_batch_size / 256."""
    cfg = OptimConfig(base_lr=1.5e-4, min_lr=1e-5, warmup_lr=1e-6, scale_lr_bounds=True, warmup_epochs=1, epochs=4)
    plan = plan_lr(cfg, batch_size=32, world_size=64, steps_per_epoch=10)
    assert plan.lr == pytest.approx(1.5e-4 * 8) and plan.min_lr == pytest.approx(8e-5)
    assert plan.warmup_lr == pytest.approx(8e-6)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=plan.lr)
    sched = build_scheduler(opt, cfg, plan)
    assert opt.param_groups[0]["lr"] == pytest.approx(8e-6)  # step 0: warmup_lr
    sched.step_update(plan.total_steps)
    assert opt.param_groups[0]["lr"] == pytest.approx(8e-5)  # the floor
    absolute = plan_lr(OptimConfig(min_lr=1e-6), batch_size=32, world_size=64, steps_per_epoch=10)
    assert absolute.min_lr == 1e-6  # MAE / ConvMAE: absolute


def _resolved(preset):
    cfg = load_config(preset)
    o, d = cfg.optim, cfg.data
    plan = plan_lr(o, d.batch_size, cfg.slurm.nodes * cfg.slurm.gpus_per_node, steps_per_epoch=100)
    return cfg, plan


# Upstream values, written out here from the scripts (not read from our presets)
VIDEOMAE_K400_800_PRETRAIN = dict(batch=32 * 64, lr=1.5e-4 * 8, min_lr=1e-5 * 8, warmup_lr=1e-6 * 8, epochs=800,
                                  warmup=40, frames=16, rate=4, mask=0.9, betas=[0.9, 0.95])
VIDEOMAE_K400_800_FINETUNE = dict(batch=8 * 64, lr=1e-3 * 2, min_lr=1e-6 * 2, warmup_lr=1e-6 * 2, epochs=100,
                                  warmup=5, layer_decay=0.75, drop_path=0.1, num_sample=1, views=(5, 3))
VIDEOMAE_SSV2_800_FINETUNE = dict(batch=8 * 64, lr=5e-4 * 2, epochs=50, segments=16, views=(2, 3))
CONVMAE_IN1K_FINETUNE = dict(batch=1024, lr=5e-4 * 4, min_lr=1e-6, epochs=100, warmup=5, layer_decay=0.65)


def test_pretrain_k400_base_is_videomae_800_epoch_script():
    cfg, plan = _resolved("pretrain_k400_base")
    u = VIDEOMAE_K400_800_PRETRAIN
    assert (plan.effective_batch, cfg.optim.epochs, cfg.optim.warmup_epochs) == (u["batch"], u["epochs"], u["warmup"])
    assert (plan.lr, plan.min_lr, plan.warmup_lr) == pytest.approx((u["lr"], u["min_lr"], u["warmup_lr"]))
    s = clip_sampling(cfg.data, "pretrain")
    assert (s.kind, s.num_frames, s.sampling_rate) == ("dense", u["frames"], u["rate"])
    assert cfg.model.mask_ratio == u["mask"] and cfg.model.mask_type == "tube" and cfg.optim.betas == u["betas"]
    assert cfg.model.loss_target == "videomae" and cfg.data.pretrain_crop == "multiscale"
    assert not flip_enabled(cfg.data, "pretrain")


def test_pretrain_ssv2_base_is_dense_16x2():
    cfg, _ = _resolved("pretrain_ssv2_base")
    s = clip_sampling(cfg.data, "pretrain")
    assert (s.kind, s.num_frames, s.sampling_rate) == ("dense", 16, 2) and not flip_enabled(cfg.data, "pretrain")


def test_finetune_k400_base_is_videomae_800_epoch_finetune_script():
    cfg, plan = _resolved("finetune_k400_base")
    u = VIDEOMAE_K400_800_FINETUNE
    assert (plan.effective_batch, cfg.optim.epochs, cfg.optim.warmup_epochs) == (u["batch"], u["epochs"], u["warmup"])
    assert (plan.lr, plan.min_lr, plan.warmup_lr) == pytest.approx((u["lr"], u["min_lr"], u["warmup_lr"]))
    assert cfg.optim.layer_decay == u["layer_decay"] and cfg.model.drop_path_rate == u["drop_path"]
    assert cfg.data.repeated_aug == u["num_sample"] and cfg.model.pos_embed == "fixed"
    assert (cfg.eval.num_temporal_views, cfg.eval.num_spatial_views) == u["views"]


def test_finetune_ssv2_base_is_videomae_800_epoch_finetune_script():
    cfg, plan = _resolved("finetune_ssv2_base")
    u = VIDEOMAE_SSV2_800_FINETUNE
    assert (plan.effective_batch, cfg.optim.epochs) == (u["batch"], u["epochs"]) and plan.lr == pytest.approx(u["lr"])
    s = clip_sampling(cfg.data, "finetune")
    assert (s.kind, s.num_frames) == ("segment", u["segments"]) and not flip_enabled(cfg.data, "finetune")
    assert (cfg.eval.num_temporal_views, cfg.eval.num_spatial_views) == u["views"]


def test_finetune_in1k_base_is_convmae_finetune_md():
    cfg, plan = _resolved("finetune_in1k_base")
    u = CONVMAE_IN1K_FINETUNE
    assert (plan.effective_batch, cfg.optim.epochs, cfg.optim.warmup_epochs) == (u["batch"], u["epochs"], u["warmup"])
    assert (plan.lr, plan.min_lr) == pytest.approx((u["lr"], u["min_lr"])) and cfg.optim.layer_decay == 0.65
    assert cfg.model.pos_embed == "learnable"


@pytest.mark.parametrize("preset,names", [
    ("pretrain_k400_base", "scripts/kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800/"),
    ("finetune_k400_base", "scripts/kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800/"),
    ("pretrain_ssv2_base", "scripts/ssv2/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800/"),
    ("finetune_ssv2_base", "scripts/ssv2/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800/"),
    ("pretrain_in1k_base", "Alpha-VL/ConvMAE PRETRAIN.md"),
    ("finetune_in1k_base", "Alpha-VL/ConvMAE FINETUNE.md"),
])
def test_each_base_preset_names_the_script_it_reproduces(preset, names):
    header = "".join(line[1:].strip() for line in find_preset(preset).read_text().splitlines()
                     if line.startswith("#"))
    assert "Reproduces:" in header and names.replace(" ", "") in header.replace(" ", "")


def test_tiny_presets_keep_the_measured_recipe():
    """Issue 14's tiny presets keep the behaviour they were measured with (each pinned key, resolved)."""
    pre = load_config("pretrain_k400_tiny")
    assert (pre.model.loss_target, pre.model.conv_init, pre.data.pretrain_crop) == ("mae", "transformer", "multiscale")
    assert pre.optim.min_lr == 0.0 and not pre.optim.scale_lr_bounds and not flip_enabled(pre.data, "pretrain")
    ssv2 = load_config("pretrain_ssv2_tiny")
    assert clip_sampling(ssv2.data, "pretrain").kind == "segment"  # measured with segment sampling
    for name in ("finetune_k400_tiny", "finetune_ssv2_tiny", "finetune_in1k_tiny", "linprobe_k400_tiny",
                 "linprobe_in1k_tiny", "eval_tiny"):
        cfg = load_config(name)
        assert (cfg.model.pos_embed, cfg.model.conv_init) == ("fixed", "transformer"), name
    image_pre, image_ft = load_config("pretrain_in1k_tiny"), load_config("finetune_in1k_tiny")
    assert image_pre.model.conv_init == "transformer"
    assert image_pre.data.interpolation == image_ft.data.interpolation == "bilinear"
