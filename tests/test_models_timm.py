"""Every registered model is also a timm model, built by the same code with the same parameters."""

import pytest
import torch

# isort: off
from videoconvmae import compat  # noqa: F401
import timm
# isort: on

from videoconvmae.models import create_model, list_models


def shapes(model):
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def test_timm_lists_every_registered_name():
    assert timm.list_models("*convmae*") == list_models()
    assert timm.is_model("videoconvmae_base_cls") and timm.is_model("convmae_huge_pretrain")


@pytest.mark.parametrize("name", list_models())
def test_timm_and_create_model_build_the_same_parameter_set(name):
    with torch.device("meta"):  # shapes only: even convmae_huge in milliseconds
        ours, theirs = create_model(name), timm.create_model(name)
    assert type(ours) is type(theirs) and shapes(ours) == shapes(theirs)
    cfg = theirs.pretrained_cfg
    assert cfg["architecture"] == name and cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert "blocks{1,2}.i.attn" in cfg["key_layout"] and cfg["first_conv"] == "patch_embed1.proj"
    video = name.startswith("videoconvmae_")
    assert (cfg.get("num_frames") is not None) == video and cfg["input_size"][0] == 3
    if video:
        assert cfg["num_frames"] % cfg["tubelet"] == 0


@pytest.mark.parametrize("name", ["convmae_tiny_cls", "videoconvmae_tiny_pretrain"])
def test_same_seed_same_weights_and_num_classes_passes_through(name):
    torch.manual_seed(0)
    ours = create_model(name)
    torch.manual_seed(0)
    theirs = timm.create_model(name)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, theirs.state_dict()[k]), k
    if name.endswith("_cls"):
        assert timm.create_model("videoconvmae_tiny_cls", num_classes=400).head.out_features == 400


def test_pretrained_loads_a_local_file_and_refuses_without_one(tmp_path):
    source = create_model("convmae_tiny_cls", num_classes=7)
    torch.save({"model": source.state_dict()}, tmp_path / "w.pt")
    model = timm.create_model("convmae_tiny_cls", num_classes=7, pretrained=True,
                              pretrained_cfg_overlay={"file": str(tmp_path / "w.pt")})
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), source.eval()(x))
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model("convmae_tiny_cls", pretrained=True)
