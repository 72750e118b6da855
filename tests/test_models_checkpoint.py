"""Checkpoint interop: our own round trip, the official ConvMAE layout (built here as the official code would
produce it, then run through an independent re-implementation of the official forward), 2D -> 3D inflation."""

import pytest
import torch
import torch.nn.functional as F
from mae_reference import mae_2d_sincos_numpy

from videoconvmae.models import create_model, load_pretrained
from videoconvmae.models.config import ModelConfig
from videoconvmae.models.registry import build_model

DIMS, DEPTHS, RATIOS, HEADS = (32, 48, 64), (1, 1, 2), (4, 4, 4), 2  # convmae_tiny
DEC_DIM, DEC_DEPTH, DEC_HEADS = 64, 1, 2


# ---- the official ConvMAE layout (Alpha-VL/ConvMAE models_convmae.py / vision_transformer.py) ---------------

def official_state_dict(grid=(4, 6), seed=0, decoder=True):
    """Random weights with the official keys and shapes: 1x1 convs as [C, C, 1, 1], depthwise conv named ``attn``,
    the fixed sin-cos ``pos_embed`` tables the official pretraining stores."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def put(name, *shape, scale=0.1):
        sd[name] = torch.randn(*shape, generator=g) * scale

    def ln(name, dim):
        sd[f"{name}.weight"] = 1 + torch.randn(dim, generator=g) * 0.1
        sd[f"{name}.bias"] = torch.randn(dim, generator=g) * 0.1

    def vit_block(prefix, dim, ratio):
        ln(f"{prefix}.norm1", dim)
        put(f"{prefix}.attn.qkv.weight", 3 * dim, dim)
        put(f"{prefix}.attn.qkv.bias", 3 * dim)
        put(f"{prefix}.attn.proj.weight", dim, dim)
        put(f"{prefix}.attn.proj.bias", dim)
        ln(f"{prefix}.norm2", dim)
        put(f"{prefix}.mlp.fc1.weight", int(dim * ratio), dim)
        put(f"{prefix}.mlp.fc1.bias", int(dim * ratio))
        put(f"{prefix}.mlp.fc2.weight", dim, int(dim * ratio))
        put(f"{prefix}.mlp.fc2.bias", dim)

    c_in = 3
    for i, (c, k) in enumerate(zip(DIMS, (4, 2, 2)), start=1):
        put(f"patch_embed{i}.proj.weight", c, c_in, k, k)
        put(f"patch_embed{i}.proj.bias", c)
        ln(f"patch_embed{i}.norm", c)
        c_in = c
    put("patch_embed4.weight", DIMS[2], DIMS[2])
    put("patch_embed4.bias", DIMS[2])
    put("stage1_output_decode.weight", DIMS[2], DIMS[0], 4, 4)
    put("stage1_output_decode.bias", DIMS[2])
    put("stage2_output_decode.weight", DIMS[2], DIMS[1], 2, 2)
    put("stage2_output_decode.bias", DIMS[2])
    sd["pos_embed"] = mae_2d_sincos(DIMS[2], *grid)  # the official initialize_weights
    for stage in (1, 2):
        c, ratio = DIMS[stage - 1], RATIOS[stage - 1]
        for i in range(DEPTHS[stage - 1]):
            p = f"blocks{stage}.{i}"
            ln(f"{p}.norm1", c)
            put(f"{p}.conv1.weight", c, c, 1, 1)
            put(f"{p}.conv1.bias", c)
            put(f"{p}.conv2.weight", c, c, 1, 1)
            put(f"{p}.conv2.bias", c)
            put(f"{p}.attn.weight", c, 1, 5, 5)
            put(f"{p}.attn.bias", c)
            ln(f"{p}.norm2", c)
            put(f"{p}.mlp.fc1.weight", int(c * ratio), c, 1, 1)
            put(f"{p}.mlp.fc1.bias", int(c * ratio))
            put(f"{p}.mlp.fc2.weight", c, int(c * ratio), 1, 1)
            put(f"{p}.mlp.fc2.bias", c)
    for i in range(DEPTHS[2]):
        vit_block(f"blocks3.{i}", DIMS[2], RATIOS[2])
    ln("norm", DIMS[2])
    if decoder:
        put("decoder_embed.weight", DEC_DIM, DIMS[2])
        put("decoder_embed.bias", DEC_DIM)
        put("mask_token", 1, 1, DEC_DIM)
        sd["decoder_pos_embed"] = mae_2d_sincos(DEC_DIM, *grid)
        for i in range(DEC_DEPTH):
            vit_block(f"decoder_blocks.{i}", DEC_DIM, RATIOS[0])
        ln("decoder_norm", DEC_DIM)
        put("decoder_pred.weight", 16 * 16 * 3, DEC_DIM)
        put("decoder_pred.bias", 16 * 16 * 3)
    return sd


def mae_2d_sincos(dim, gh, gw):
    """MAE's reference embedding as the official model adds it: [1, gh*gw, dim] float32."""
    return torch.from_numpy(mae_2d_sincos_numpy(dim, gh, gw)).float()[None]


class OfficialOps:
    """The official modules as functions of an official-layout state dict (channels-first, 1x1 convs as conv2d)."""

    def __init__(self, sd):
        self.sd = sd

    def layer_norm(self, x, p, eps):
        return F.layer_norm(x, x.shape[-1:], self.sd[f"{p}.weight"], self.sd[f"{p}.bias"], eps)

    def ln_cf(self, x, p, eps=1e-5):  # LayerNorm over channels of a [N, C, H, W] map
        return self.layer_norm(x.permute(0, 2, 3, 1), p, eps).permute(0, 3, 1, 2)

    def patch_embed(self, x, p, k):
        sd = self.sd
        return F.gelu(self.ln_cf(F.conv2d(x, sd[f"{p}.proj.weight"], sd[f"{p}.proj.bias"], stride=k), f"{p}.norm"))

    def cblock(self, x, p, keep=None):
        sd = self.sd
        y = F.conv2d(self.ln_cf(x, f"{p}.norm1"), sd[f"{p}.conv1.weight"], sd[f"{p}.conv1.bias"])
        y = y if keep is None else keep * y
        y = F.conv2d(y, sd[f"{p}.attn.weight"], sd[f"{p}.attn.bias"], padding=2, groups=y.shape[1])
        x = x + F.conv2d(y, sd[f"{p}.conv2.weight"], sd[f"{p}.conv2.bias"])
        y = F.gelu(F.conv2d(self.ln_cf(x, f"{p}.norm2"), sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"]))
        return x + F.conv2d(y, sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])

    def vit_block(self, x, p, heads):
        sd = self.sd
        b, length, c = x.shape
        qkv = F.linear(self.layer_norm(x, f"{p}.norm1", 1e-6), sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"])
        q, k, v = qkv.reshape(b, length, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(-1)
        x = x + F.linear((attn @ v).transpose(1, 2).reshape(b, length, c), sd[f"{p}.attn.proj.weight"],
                         sd[f"{p}.attn.proj.bias"])
        y = F.gelu(F.linear(self.layer_norm(x, f"{p}.norm2", 1e-6), sd[f"{p}.mlp.fc1.weight"],
                            sd[f"{p}.mlp.fc1.bias"]))
        return x + F.linear(y, sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])


def official_classifier_forward(sd, imgs):
    """models_convvit.ConvViT(global_pool=True).forward: all tokens, mean pool, fc_norm, head."""
    o = OfficialOps(sd)
    x = o.patch_embed(imgs, "patch_embed1", 4)
    for i in range(DEPTHS[0]):
        x = o.cblock(x, f"blocks1.{i}")
    x = o.patch_embed(x, "patch_embed2", 2)
    for i in range(DEPTHS[1]):
        x = o.cblock(x, f"blocks2.{i}")
    x = o.patch_embed(x, "patch_embed3", 2).flatten(2).permute(0, 2, 1)
    x = F.linear(x, sd["patch_embed4.weight"], sd["patch_embed4.bias"])
    x = x + sd["pos_embed"]  # ConvViT's own (learned) table
    for i in range(DEPTHS[2]):
        x = o.vit_block(x, f"blocks3.{i}", HEADS)
    x = o.layer_norm(x.mean(dim=1), "fc_norm", 1e-6)
    return F.linear(x, sd["head.weight"], sd["head.bias"])


def official_forward(sd, imgs, mask):
    """Independent re-implementation of the official pretrain forward (channels-first convs, 1x1 convs as
    conv2d, the official mask upsampling), with ids_keep = the visible tokens in ascending order."""
    n, _, h, w = imgs.shape
    gh, gw = h // 16, w // 16
    o = OfficialOps(sd)
    layer_norm, patch_embed, cblock, vit_block = o.layer_norm, o.patch_embed, o.cblock, o.vit_block

    m = mask.float()
    # official: mask.reshape(-1,14,14).unsqueeze(-1).repeat(1,1,1,16).reshape(-1,14,14,4,4).permute(0,1,3,2,4)...
    m1 = m.reshape(-1, gh, gw).unsqueeze(-1).repeat(1, 1, 1, 16).reshape(-1, gh, gw, 4, 4).permute(0, 1, 3, 2, 4)
    m1 = m1.reshape(n, gh * 4, gw * 4).unsqueeze(1)
    m2 = m.reshape(-1, gh, gw).unsqueeze(-1).repeat(1, 1, 1, 4).reshape(-1, gh, gw, 2, 2).permute(0, 1, 3, 2, 4)
    m2 = m2.reshape(n, gh * 2, gw * 2).unsqueeze(1)
    ids_keep = torch.argsort(mask.int(), dim=1, stable=True)[:, : int((~mask[0]).sum())]
    ids_shuffle = torch.argsort(mask.int(), dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)

    def gather(t, idx):
        return torch.gather(t, 1, idx.unsqueeze(-1).repeat(1, 1, t.shape[-1]))

    x = patch_embed(imgs, "patch_embed1", 4)
    for i in range(DEPTHS[0]):
        x = cblock(x, f"blocks1.{i}", 1 - m1)
    s1 = F.conv2d(x, sd["stage1_output_decode.weight"], sd["stage1_output_decode.bias"], stride=4)
    x = patch_embed(x, "patch_embed2", 2)
    for i in range(DEPTHS[1]):
        x = cblock(x, f"blocks2.{i}", 1 - m2)
    s2 = F.conv2d(x, sd["stage2_output_decode.weight"], sd["stage2_output_decode.bias"], stride=2)
    x = patch_embed(x, "patch_embed3", 2).flatten(2).permute(0, 2, 1)
    x = F.linear(x, sd["patch_embed4.weight"], sd["patch_embed4.bias"]) + mae_2d_sincos(DIMS[2], gh, gw)
    x = gather(x, ids_keep)
    for i in range(DEPTHS[2]):
        x = vit_block(x, f"blocks3.{i}", HEADS)
    x = x + gather(s1.flatten(2).permute(0, 2, 1), ids_keep) + gather(s2.flatten(2).permute(0, 2, 1), ids_keep)
    latent = layer_norm(x, "norm", 1e-6)

    x = F.linear(latent, sd["decoder_embed.weight"], sd["decoder_embed.bias"])
    x = torch.cat([x, sd["mask_token"].repeat(n, ids_restore.shape[1] - x.shape[1], 1)], dim=1)
    x = gather(x, ids_restore) + mae_2d_sincos(DEC_DIM, gh, gw)
    for i in range(DEC_DEPTH):
        x = vit_block(x, f"decoder_blocks.{i}", DEC_HEADS)
    pred = F.linear(layer_norm(x, "decoder_norm", 1e-6), sd["decoder_pred.weight"], sd["decoder_pred.bias"])
    target = imgs.reshape(n, 3, gh, 16, gw, 16).permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, 768)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    loss = (((pred - target) ** 2).mean(-1) * m).sum() / m.sum()
    return latent, pred, loss


def test_official_layout_full_checkpoint_loads_and_matches_the_official_forward(tmp_path):
    sd = official_state_dict()
    path = tmp_path / "convmae_official.pth"
    torch.save({"model": sd, "epoch": 3}, path)  # the official main_pretrain save format
    model = create_model("convmae_tiny_pretrain")
    report = load_pretrained(model, path)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert sorted(report.ignored) == ["decoder_pos_embed", "pos_embed"]
    assert torch.equal(model.blocks1[0].conv1.weight, sd["blocks1.0.conv1.weight"][:, :, 0, 0])
    assert torch.equal(model.blocks2[0].dwconv.weight, sd["blocks2.0.attn.weight"])

    x = torch.randn(2, 3, 64, 96)  # non-square: catches any h / w mix-up in the pos embed or the masks
    mask = model(x, generator=torch.Generator().manual_seed(0))["mask"]
    out = model(x, mask=mask)
    latent, pred, loss = official_forward(sd, x, mask)
    torch.testing.assert_close(out["latent"], latent, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["pred"], pred, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss"], loss, rtol=1e-4, atol=1e-5)


def test_official_pretrain_checkpoint_into_classifier_reports_head_and_fc_norm():
    model = create_model("convmae_tiny_cls", num_classes=10, pos_grid=(4, 6))
    report = load_pretrained(model, {"model": official_state_dict()})
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert report.ignored == ["decoder_pos_embed"] and "1 ignored" in report.summary()
    torch.testing.assert_close(model.pos_embed.data, mae_2d_sincos(DIMS[2], 4, 6))  # what ConvMAE finetunes from
    assert "norm.weight" in report.unexpected and "decoder_embed.weight" in report.unexpected
    assert "stage1_output_decode.weight" in report.unexpected
    assert not any(k.startswith(("blocks", "patch_embed")) for k in report.unexpected)


def official_finetuned_state_dict(num_classes=10):
    """An official-layout FINETUNED classifier (models_convvit.ConvViT, global pool): encoder, fc_norm, head and
    a learned ``pos_embed`` (the sin-cos start plus what finetuning changed)."""
    sd = {k: v for k, v in official_state_dict(decoder=False).items()
          if not k.startswith(("stage1_output", "stage2_output", "norm."))}
    g = torch.Generator().manual_seed(5)
    sd["pos_embed"] = sd["pos_embed"] + 0.3 * torch.randn(sd["pos_embed"].shape, generator=g)
    sd["fc_norm.weight"], sd["fc_norm.bias"] = torch.ones(64), torch.zeros(64)
    sd["head.weight"] = torch.randn(num_classes, 64, generator=g)
    sd["head.bias"] = torch.randn(num_classes, generator=g)
    return sd


def test_official_finetuned_checkpoint_loads_with_its_learned_pos_embed():
    sd = official_finetuned_state_dict()
    model = create_model("convmae_tiny_cls", num_classes=10, pos_grid=(4, 6))
    report = load_pretrained(model, sd)
    assert report.missing == [] and report.unexpected == [] and report.ignored == [] and report.mismatched == []
    assert torch.equal(model.head.weight, sd["head.weight"]) and torch.equal(model.pos_embed.data, sd["pos_embed"])
    x = torch.randn(2, 3, 64, 96)
    torch.testing.assert_close(model.eval()(x), official_classifier_forward(sd, x), rtol=1e-4, atol=1e-5)
    # a model with a fixed table cannot take it: dropped, and the report says so
    fixed = create_model("convmae_tiny_cls", num_classes=10, pos_embed="fixed")
    report = load_pretrained(fixed, sd)
    assert report.ignored == ["pos_embed"] and "ignored: pos_embed" in report.summary()
    # a different class count: the head is reported as mismatched, not loaded, the rest loads
    other = create_model("convmae_tiny_cls", num_classes=5, pos_grid=(4, 6))
    report = load_pretrained(other, sd)
    assert sorted(report.missing) == ["head.bias", "head.weight"] and len(report.mismatched) == 2


def test_our_checkpoint_round_trip_and_prefixes(tmp_path):
    torch.manual_seed(0)
    a, b = create_model("videoconvmae_tiny_pretrain"), create_model("videoconvmae_tiny_pretrain")
    path = tmp_path / "weights.pt"
    torch.save({"model": {f"module.{k}": v for k, v in a.state_dict().items()}, "config": {}}, path)
    report = load_pretrained(b, path)
    assert report.missing == [] and report.unexpected == [] and report.converted == []
    x = torch.randn(1, 3, 4, 32, 32)
    mask = a(x)["mask"]
    assert torch.equal(a(x, mask=mask)["pred"], b(x, mask=mask)["pred"])


def test_build_model_applies_config_and_pretrained(tmp_path, capsys):
    torch.manual_seed(0)
    src = create_model("convmae_tiny_pretrain")
    path = tmp_path / "ckpt.pth"
    torch.save({"model": src.state_dict()}, path)
    cfg = ModelConfig(arch="convmae_tiny", mask_ratio=0.5, loss_target="pixel", multiscale_decoder=False,
                      pretrained=str(path), grad_checkpointing=True)
    model = build_model(cfg, "pretrain")
    assert "0 missing, 0 unexpected" in capsys.readouterr().out
    assert model.mask_ratio == 0.5 and model.loss_target == "pixel" and not model.fuse_stages
    assert model.grad_checkpointing
    assert torch.equal(model.patch_embed1.proj.weight, src.patch_embed1.proj.weight)
    cls = build_model(ModelConfig(arch="videoconvmae_tiny", tubelet=1, temporal_kernel=5, drop_path_rate=0.2),
                      "finetune", num_classes=4)
    assert cls.head.out_features == 4 and cls.patch_embed1.kernel == (1, 4, 4)
    assert cls.blocks1[0].dwconv.kernel_size == (5, 5, 5)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(ModelConfig(arch="convmae_tiny"), "finetune")
    with pytest.raises(ValueError, match="model.arch: unknown family 'convmae_giant'"):
        build_model(ModelConfig(arch="convmae_giant"), "pretrain")


def test_bad_checkpoint_inputs_give_one_clear_line(tmp_path):
    model = create_model("convmae_tiny_cls", num_classes=2)
    with pytest.raises(ValueError, match="model.pretrained: .*missing.pth: no such file"):
        load_pretrained(model, tmp_path / "missing.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: cannot be loaded as a checkpoint"):
        load_pretrained(model, bad)
    with pytest.raises(ValueError, match="state dict of tensors"):
        load_pretrained(model, {"model": {"a": 1}})


def test_inflation_reproduces_the_image_model_on_a_static_clip():
    """Patch embed spread over the tubelet (/kT) and centre-initialised depthwise convs: each frame of a static
    clip gives exactly the image model's stage-1 / stage-2 features, including the first and last frames."""
    torch.manual_seed(0)
    image = create_model("convmae_tiny_pretrain")
    video = create_model("videoconvmae_tiny_pretrain", tubelet=2, temporal_kernel=3)
    report = load_pretrained(video, image.state_dict())
    assert report.unexpected == [] and sorted(report.missing) == ["decoder_pred.bias", "decoder_pred.weight"]
    assert [m.split()[0] for m in report.mismatched] == ["decoder_pred.weight", "decoder_pred.bias"]  # 768 vs 1536
    x = torch.randn(1, 3, 32, 48)
    clip = x[:, :, None].expand(1, 3, 6, 32, 48).contiguous()
    with torch.no_grad():
        img, vid = image.encode(x), video.encode(clip)
    for t in range(3):
        torch.testing.assert_close(vid.stage1[:, t], img.stage1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vid.stage2[:, t], img.stage2, rtol=1e-5, atol=1e-5)
