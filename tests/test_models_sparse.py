"""The visible-only stages (models/sparse.py) against the dense masked-convolution reference."""

import copy

import pytest
import torch

from videoconvmae.models import create_model
from videoconvmae.models.masking import make_mask

CASES = [
    ("convmae_tiny_pretrain", (2, 3, 64, 64), "block", 0.75),
    ("convmae_tiny_pretrain", (3, 3, 48, 80), "block", 0.5),
    ("videoconvmae_tiny_pretrain", (2, 3, 4, 64, 48), "tube", 0.9),
    ("videoconvmae_tiny_pretrain", (2, 3, 8, 32, 32), "random", 0.75),
]


def dense_and_sparse(name: str, mask_type: str, ratio: float):
    torch.manual_seed(0)
    sparse = create_model(name, mask_type=mask_type, mask_ratio=ratio, sparse_stages=True)
    dense = copy.deepcopy(sparse)
    dense.sparse_stages = False
    return dense, sparse


@pytest.mark.parametrize("depthwise", ["dense_grid", "visible_only"])
@pytest.mark.parametrize("name,shape,mask_type,ratio", CASES)
def test_sparse_equals_dense_loss_pred_and_grads(name, shape, mask_type, ratio, depthwise, monkeypatch):
    from videoconvmae.models import sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "VISIBLE_CONV_MAX_FRACTION", 0.0 if depthwise == "dense_grid" else 1.0)
    dense, sparse = dense_and_sparse(name, mask_type, ratio)
    x = torch.randn(shape)
    for seed in (0, 1):
        mask = make_mask(mask_type, shape[0], dense.token_grid(shape), ratio, torch.Generator().manual_seed(seed))
        for m in (dense, sparse):
            m.zero_grad()
        out_d, out_s = dense(x, mask=mask), sparse(x, mask=mask)
        out_d["loss"].backward()
        out_s["loss"].backward()
        assert torch.equal(out_d["mask"], out_s["mask"])
        assert abs(out_d["loss"].item() - out_s["loss"].item()) <= 1e-5
        assert (out_d["pred"] - out_s["pred"]).abs().max().item() <= 1e-5
        worst = max((pd.grad - ps.grad).abs().max().item()
                    for pd, ps in zip(dense.parameters(), sparse.parameters()) if pd.grad is not None)
        assert worst <= 1e-5
        assert all((p.grad is None) == (q.grad is None) for p, q in zip(dense.parameters(), sparse.parameters()))


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_sparse_path_differs_when_a_window_is_misplaced(monkeypatch, fraction):
    """The equality above is not vacuous: a wrong cell layout in the sparse path is caught (both strategies)."""
    from videoconvmae.models import sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "VISIBLE_CONV_MAX_FRACTION", fraction)
    dense, sparse = dense_and_sparse("convmae_tiny_pretrain", "block", 0.5)
    x = torch.randn(2, 3, 64, 64)
    mask = make_mask("block", 2, dense.token_grid(x.shape), 0.5, torch.Generator().manual_seed(0))
    original = sparse_mod.dense_positions
    monkeypatch.setattr(sparse_mod, "dense_positions", lambda idx, grid, sub: original(idx.flip(1), grid, sub))
    assert (dense(x, mask=mask)["pred"] - sparse(x, mask=mask)["pred"]).abs().max().item() > 1e-3


@pytest.mark.parametrize("name,shape,mask_type", [
    ("convmae_tiny_pretrain", (2, 3, 64, 64), "block"),
    ("videoconvmae_tiny_pretrain", (2, 3, 4, 64, 64), "random"),
])
def test_sparse_path_is_leak_free_exactly(name, shape, mask_type):
    torch.manual_seed(0)
    model = create_model(name, mask_type=mask_type, mask_ratio=0.5).eval()
    x = torch.randn(shape)
    mask = make_mask(mask_type, shape[0], model.token_grid(shape), 0.5, torch.Generator().manual_seed(2))
    grid = model.token_grid(shape)
    pix = mask.reshape(shape[0], *grid)
    for axis, size in zip(range(1, len(grid) + 1), model.patch_size):
        pix = pix.repeat_interleave(size, dim=axis)
    x2 = torch.where(pix[:, None], torch.randn(shape) * 3, x)
    with torch.no_grad():
        a, b = model.encode(x, mask), model.encode(x2, mask)
    assert a.sparse and a.stage1.shape[1] == int((~mask[0]).sum())
    assert torch.equal(a.stage1, b.stage1) and torch.equal(a.stage2, b.stage2) and torch.equal(a.latent, b.latent)


def test_classifier_and_unmasked_encode_use_dense_path():
    model = create_model("videoconvmae_tiny_pretrain")
    out = model.encode(torch.randn(1, 3, 4, 32, 32))
    assert not out.sparse and out.latent.shape[1] == 2 * 2 * 2
