"""The typed config: defaults, presets, overrides, one-line errors, YAML round trip."""

import pytest

from videoconvmae.cli import main
from videoconvmae.config import Config, from_dict, load_config, save_config, to_dict
from videoconvmae.errors import ConfigError


def test_defaults_and_override_types():
    cfg = load_config(None, ["model.mask_ratio=0.8", "data.batch_size=3", "optim.betas=[0.9,0.999]"])
    assert isinstance(cfg, Config)
    assert cfg.model.mask_ratio == 0.8 and cfg.data.batch_size == 3 and cfg.optim.betas == [0.9, 0.999]


@pytest.mark.parametrize("override,needle", [
    ("model.mask_rati=0.8", "unknown config key 'model.mask_rati'"),
    ("nosuch.x=1", "unknown config key 'nosuch'"),
    ("data.batch_size=abc", "'data.batch_size'"),
    ("model.mask_ratio=1.5", "model.mask_ratio"),
    ("task=bogus", "task"),
    ("no_equals_sign", "expected key.sub=value"),
])
def test_bad_override_is_one_line_error_naming_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_empty_override_means_empty_string_or_none():
    cfg = load_config(None, ["model.pretrained=", "optim.clip_grad=", "model.mask_ratio="])
    assert cfg.model.pretrained == "" and cfg.optim.clip_grad is None and cfg.model.mask_ratio is None
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config(None, ["data.batch_size="])


def test_preset_chain_and_round_trip(tmp_path, monkeypatch):
    (tmp_path / "base.yaml").write_text("model:\n  arch: convmae_tiny\ndata:\n  batch_size: 5\n")
    (tmp_path / "child.yaml").write_text("_base_: base\ndata:\n  num_frames: 4\n")
    monkeypatch.setenv("VIDEOCONVMAE_CONFIGS", str(tmp_path))
    cfg = load_config("child", ["data.batch_size=7"])
    assert (cfg.model.arch, cfg.data.batch_size, cfg.data.num_frames) == ("convmae_tiny", 7, 4)
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(str(path)) == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_preset_with_unknown_key_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 1.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'optim\.lrr'"):
        load_config(str(bad))


def test_cli_config_show(capsys):
    assert main(["config", "show", "model.mask_ratio=0.5"]) == 0
    assert "mask_ratio: 0.5" in capsys.readouterr().out
    assert main(["config", "show", "model.bogus=1"]) == 2
    assert "unknown config key 'model.bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("overrides,needle", [
    (["data.batch_size=0"], "data.batch_size: expected an integer >= 1, got 0"),  # was a ZeroDivisionError
    (["optim.betas=[0.9]"], "optim.betas: expected two values in [0, 1), got [0.9]"),  # was a zip / index error
    (["model.mask_ratio=0"], "model.mask_ratio: expected a value in (0, 1)"),  # hid nothing: loss 0, grads 0
    (["train.max_steps=0"], "train.max_steps: expected >= 1"),  # exported untrained weights as completed
    (["train.max_steps=-1"], "train.max_steps: expected >= 1"),
    (["data.input_size=40"], "data.input_size: expected a multiple of 16"),  # failed only after [start]
    (["data.num_frames=5"], "data.num_frames: expected a multiple of model.tubelet=2"),
    (["data.num_frames=6", "model.tubelet=4"], "data.num_frames: expected a multiple of model.tubelet=4"),
])
def test_values_no_run_can_use_are_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_sizes_are_checked_by_config_show(capsys):
    assert main(["config", "show", "pretrain_k400_tiny", "data.input_size=72"]) == 2
    assert "data.input_size: expected a multiple of 16 (the model's token size), got 72" in capsys.readouterr().err
    assert load_config("pretrain_in1k_tiny", ["data.num_frames=5"]).data.num_frames == 5  # images: no frames


def test_a_duplicate_key_in_a_preset_is_refused(tmp_path):
    (tmp_path / "dup.yaml").write_text("optim:\n  lr: 1.0e-3\n  epochs: 2\n  lr: 1.0e-2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: not valid YAML \(duplicate key 'lr' \(line 4\)\)"):
        load_config(str(tmp_path / "dup.yaml"))
