"""The typed config: defaults, presets, overrides, one-line errors, YAML round trip."""

import pytest

from videoconvmae.cli import main
from videoconvmae.config import Config, ConfigError, from_dict, load_config, save_config, to_dict


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
