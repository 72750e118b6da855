"""run_eval end to end on the synthetic dataset with a tiny classifier: one decode per video, exact shard +
merge, unreadable videos listed and counted, SSV2 / image modes, the CLI forms."""

import copy
import dataclasses
import json
import os
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import videoconvmae.data.video as video_io
from videoconvmae.cli import main
from videoconvmae.config import from_dict, load_config, to_dict
from videoconvmae.data.records import load_records
from videoconvmae.data.transforms import normalize
from videoconvmae.data.views import ViewsDataset, k400_temporal_views
from videoconvmae.errors import ConfigError
from videoconvmae.eval.merge import merge_shards
from videoconvmae.eval.metrics import load_predictions
from videoconvmae.eval.multiview import run_eval, view_spec
from videoconvmae.models import build_model

METRIC_KEYS = ("top1", "top5", "mean_class_acc", "num_evaluated", "num_unreadable", "num_assigned")


def _tiny_config(synth_root, dataset="k400", arch="videoconvmae_tiny", extra=()):
    data = {
        "k400": [f"data.root={synth_root}/k400", f"data.train_annotation={synth_root}/k400/train.csv",
                 f"data.val_annotation={synth_root}/k400/val.csv", "data.sampling_rate=2"],
        "ssv2": ["data.dataset=ssv2", f"data.root={synth_root}/ssv2/videos",
                 f"data.train_annotation={synth_root}/ssv2/train.json",
                 f"data.val_annotation={synth_root}/ssv2/validation.json"],
        "imagefolder": ["data.dataset=imagefolder", f"data.train_annotation={synth_root}/imagenet/train",
                        f"data.val_annotation={synth_root}/imagenet/val"],
    }[dataset]
    return load_config(None, ["task=finetune", f"model.arch={arch}", "data.num_frames=4", "data.input_size=32",
                              "data.short_side_size=32", "data.num_workers=0", "train.progress=false", *data, *extra])


def _checkpoint(path, cfg, num_classes, seed=0):
    """A tiny classifier in the exported-weights format. The random encoder's features of different videos are
    nearly parallel, so a random head predicts one class for all; instead the head is a nearest-class-mean
    classifier on the train split's centre views (centred, unit rows), which makes predictions vary by video."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, "finetune", num_classes).eval()
    single = copy.deepcopy(cfg)
    single.eval = dataclasses.replace(cfg.eval, num_temporal_views=1, num_spatial_views=1)
    records, _ = load_records(cfg.data, "train")
    ds = ViewsDataset(records, list(range(len(records))), view_spec(single))
    with torch.no_grad():
        views = [normalize(ds[i]["views"], cfg.data.mean, cfg.data.std) for i in range(len(ds))]
        feats = torch.stack([model.forward_features(v).mean(0) for v in views])
        labels = torch.tensor([r.label for r in records])
        means = torch.stack([feats[labels == c].mean(0) for c in range(num_classes)])
        w = means - feats.mean(0)
        model.head.weight.copy_(20 * w / w.norm(dim=1, keepdim=True))
        model.head.bias.zero_()
    torch.save({"model": model.state_dict(), "config": to_dict(cfg)}, path)
    return str(path)


@pytest.fixture(scope="module")
def k400(synth_root, tmp_path_factory):
    cfg = _tiny_config(synth_root)
    ckpt = _checkpoint(tmp_path_factory.mktemp("ckpt") / "weights.pt", cfg, 5)
    cfg.task, cfg.eval.checkpoint = "eval", ckpt
    return cfg


def _with(cfg, **eval_fields):
    cfg = copy.deepcopy(cfg)
    cfg.eval = dataclasses.replace(cfg.eval, **eval_fields)
    return cfg


def test_each_video_decoded_once(k400, tmp_path, monkeypatch):
    opened, requested = [], []
    real_open = video_io.open_video

    def counting_open(path, backend="decord"):
        reader = real_open(path, backend)
        opened.append(str(path))
        real_get = reader.get_frames

        def counting_get(indices):
            requested.append(list(indices))
            return real_get(indices)

        reader.get_frames = counting_get
        return reader

    monkeypatch.setattr(video_io, "open_video", counting_open)
    summary = run_eval(_with(k400, out_dir=str(tmp_path), num_temporal_views=5, num_spatial_views=3))
    assert summary["num_evaluated"] == 10 and summary["num_unreadable"] == 0
    assert len(opened) == 10 and len(set(opened)) == 10  # one open per video ...
    assert len(requested) == 10  # ... and one get_frames call, for all 15 views
    union = np.unique(k400_temporal_views(20, 4, 2, 5)).tolist()  # the synthetic clips have 20 frames
    assert all(r == union for r in requested)
    assert "over 10 videos" in summary["headline"]


@pytest.mark.parametrize("mode", ["contiguous", "strided"])
def test_three_shards_merged_equal_the_unsharded_run(k400, tmp_path, mode):
    full = run_eval(_with(k400, out_dir=str(tmp_path / "full"), shard_mode=mode, batch_videos=4))
    shards = [run_eval(_with(k400, out_dir=str(tmp_path / "sharded"), shard=f"{i}/3", shard_mode=mode,
                             batch_videos=2))["out_dir"] for i in range(3)]
    assert sorted(p.split("/")[-1] for p in shards) == ["shard-0-of-3", "shard-1-of-3", "shard-2-of-3"]
    merged = merge_shards(shards)
    for key in METRIC_KEYS:
        assert merged[key] == full[key], key
    a_ids, a_labels, a_scores = load_predictions(tmp_path / "full" / "predictions.npz")
    b_ids, b_labels, b_scores = load_predictions(tmp_path / "sharded" / "predictions.npz")
    order = [b_ids.index(v) for v in a_ids]
    assert sorted(a_ids) == sorted(b_ids) and len(set(a_ids)) == 10
    assert np.array_equal(a_labels, b_labels[order])
    # bit-identical here; a BLAS may pick another kernel for another batch size, so allow float32 noise
    np.testing.assert_allclose(a_scores, b_scores[order], rtol=0, atol=1e-6)
    assert len(np.unique(a_scores.argmax(1))) > 1  # the model's predictions depend on the video


def test_missing_or_duplicated_shard_is_an_error_complete_set_merges(k400, tmp_path):
    for i in (0, 2):
        run_eval(_with(k400, out_dir=str(tmp_path), shard=f"{i}/3"))
    assert main(["eval", "merge", str(tmp_path / "shard-0-of-3"), str(tmp_path / "shard-2-of-3")]) == 2
    assert main(["eval", "merge", str(tmp_path / "shard-0-of-3"), str(tmp_path / "shard-0-of-3"),
                 str(tmp_path / "shard-2-of-3")]) == 2
    run_eval(_with(k400, out_dir=str(tmp_path), shard="1/3"))
    shards = [str(tmp_path / f"shard-{i}-of-3") for i in (2, 0, 1)]  # any order
    assert main(["eval", "merge", *shards, "--out", str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["num_evaluated"] == 10


def test_unreadable_videos_are_listed_and_counted(k400, synth_root, tmp_path, capsys):
    lines = (synth_root / "k400" / "val.txt").read_text().splitlines()
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    lines += [f"{tmp_path / 'corrupt.mp4'} 1", f"{tmp_path / 'missing.mp4'} 0"]
    listing = tmp_path / "val.txt"
    listing.write_text("\n".join(lines) + "\n")
    cfg = _with(k400, out_dir=str(tmp_path / "out"))
    cfg.data.val_annotation = str(listing)
    cfg.data.train_annotation = str(synth_root / "k400" / "train.txt")  # the list form takes classes from both
    summary = run_eval(cfg)
    assert (summary["num_evaluated"], summary["num_unreadable"], summary["num_assigned"]) == (10, 2, 12)
    assert "over 10 videos; 2 unreadable videos not counted" in summary["headline"]
    bad = {u["path"].rsplit("/", 1)[-1]: u["error"] for u in summary["unreadable"]}
    assert set(bad) == {"corrupt.mp4", "missing.mp4"} and "no such file" in bad["missing.mp4"]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["num_unreadable"] == 2 and len(saved["unreadable"]) == 2
    # the command writes the report, then fails when more than data.max_skip_fraction is unreadable
    words = ["eval", k400.eval.checkpoint, f"data.val_annotation={listing}", f"eval.out_dir={tmp_path / 'cli'}",
             f"data.train_annotation={cfg.data.train_annotation}", "eval.num_temporal_views=1"]
    assert main(words) == 2
    assert "2 of 12 items unreadable (> data.max_skip_fraction=0.05)" in capsys.readouterr().err
    assert (tmp_path / "cli" / "metrics.json").is_file()
    assert main([*words, "data.max_skip_fraction=0.2"]) == 0


def test_ssv2_two_by_three_and_image_mode(synth_root, tmp_path):
    cfg = _tiny_config(synth_root, "ssv2", extra=["data.num_segments=4"])
    cfg.task, cfg.eval.checkpoint, cfg.eval.out_dir = "eval", _checkpoint(tmp_path / "s.pt", cfg, 5), str(tmp_path)
    summary = run_eval(cfg)
    assert summary["run"]["views"] == [2, 3] and summary["num_evaluated"] == 10  # paper protocol for ssv2

    cfg = _tiny_config(synth_root, "imagefolder", arch="convmae_tiny", extra=["data.short_side_size=36"])
    cfg.task, cfg.eval.checkpoint = "eval", _checkpoint(tmp_path / "i.pt", cfg, 5)
    cfg.eval.out_dir, cfg.eval.num_spatial_views = str(tmp_path / "img"), 1
    summary = run_eval(cfg)
    assert summary["run"]["protocol"] == "single centre crop" and summary["num_evaluated"] == 10
    assert "over 10 images" in summary["headline"]


def test_cli_checkpoint_form_uses_the_saved_config(k400, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["eval", k400.eval.checkpoint, f"eval.out_dir={out}", "eval.num_temporal_views=2",
                 "eval.num_spatial_views=1", "data.num_workers=0"]) == 0
    printed = capsys.readouterr().out
    assert "over 10 videos" in printed and "2x1 views" in printed
    assert json.loads((out / "metrics.json").read_text())["run"]["views"] == [2, 1]
    # the saved eval section (validation during training) is not the protocol of a standalone eval
    ckpt = torch.load(k400.eval.checkpoint, weights_only=True)
    ckpt["config"]["eval"]["num_temporal_views"] = 2
    torch.save(ckpt, tmp_path / "val2.pt")
    assert main(["eval", str(tmp_path / "val2.pt"), f"eval.out_dir={tmp_path / 'paper'}"]) == 0
    assert "5x3 views" in capsys.readouterr().out
    # exported safetensors (config in the metadata) evaluate the same as the .pt they were written from
    ckpt = torch.load(k400.eval.checkpoint, weights_only=True)
    save_file(ckpt["model"], str(tmp_path / "w.safetensors"), metadata={"config": json.dumps(ckpt["config"])})
    for name, path in (("pt", k400.eval.checkpoint), ("st", tmp_path / "w.safetensors")):
        assert main(["eval", str(path), f"eval.out_dir={tmp_path / name}", "eval.num_temporal_views=1"]) == 0
    pt, st = (load_predictions(tmp_path / n / "predictions.npz")[2] for n in ("pt", "st"))
    np.testing.assert_array_equal(pt, st)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "typo.pt")]) == 2
    assert "CHECKPOINT" in capsys.readouterr().err
    assert main(["eval", k400.eval.checkpoint, "eval.bogus=1"]) == 2
    assert "unknown config key 'eval.bogus'" in capsys.readouterr().err


def test_multiview_vs_single_view_top1_printed(k400, tmp_path):
    multi = run_eval(_with(k400, out_dir=str(tmp_path / "m"), num_temporal_views=5, num_spatial_views=3))
    single = run_eval(_with(k400, out_dir=str(tmp_path / "s"), num_temporal_views=1, num_spatial_views=1))
    print(f"\ntiny model, synthetic K400 val: 5x3-view top-1 {multi['top1']:.1f}%  "
          f"single-view top-1 {single['top1']:.1f}%")
    a = load_predictions(tmp_path / "m" / "predictions.npz")[2]
    b = load_predictions(tmp_path / "s" / "predictions.npz")[2]
    assert not np.allclose(a, b)  # the views are different inputs, not 15 copies of one clip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_eval_worker(rank, world, port, cfg_dict):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    summary = run_eval(from_dict(cfg_dict))
    assert summary["num_assigned"] == 5  # every rank returns rank 0's summary of the whole job shard


@pytest.mark.slow  # two spawned processes each import torch + timm: ~30 s on 2 busy cores
def test_two_ddp_ranks_split_a_shard_and_rank0_writes_it_whole(k400, tmp_path):
    one = run_eval(_with(k400, out_dir=str(tmp_path / "one"), shard="1/2"))
    cfg = _with(k400, out_dir=str(tmp_path / "two"), shard="1/2")
    cfg.train.dist_backend = "gloo"
    torch.multiprocessing.spawn(_ddp_eval_worker, args=(2, _free_port(), to_dict(cfg)), nprocs=2)
    two = json.loads((tmp_path / "two" / "shard-1-of-2" / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert two[key] == one[key], key
    a_ids, _, a_scores = load_predictions(tmp_path / "one" / "shard-1-of-2" / "predictions.npz")
    b_ids, _, b_scores = load_predictions(tmp_path / "two" / "shard-1-of-2" / "predictions.npz")
    assert a_ids == b_ids  # rank 0 puts both ranks' videos back in annotation order
    np.testing.assert_allclose(a_scores, b_scores, rtol=0, atol=1e-6)


def test_bad_checkpoints_are_one_line_errors(k400, tmp_path):
    ckpt = torch.load(k400.eval.checkpoint, weights_only=True)
    ckpt["model"]["head.weight"] = torch.zeros(7, ckpt["model"]["head.weight"].shape[1])
    ckpt["model"]["head.bias"] = torch.zeros(7)
    torch.save(ckpt, tmp_path / "seven.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for path, needle in [(tmp_path / "seven.pt", "do not fit videoconvmae_tiny_cls with 5 classes"),
                         (tmp_path / "junk.pt", "cannot be loaded"), (tmp_path / "none.pt", "no such file")]:
        with pytest.raises(ConfigError, match=needle) as e:
            run_eval(_with(k400, checkpoint=str(path), out_dir=str(tmp_path / "out")))
        assert "\n" not in str(e.value)


def test_eval_precision_follows_the_training_rule():
    """fp16 on a CPU was silently evaluated in bf16; it is refused in one line, as training refuses it."""
    from torch.utils.data import DataLoader

    from videoconvmae.eval.multiview import predict

    model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="train.precision=fp16 needs a CUDA device"):
        predict(model, DataLoader([]), torch.device("cpu"), "softmax", [0.5] * 3, [0.5] * 3, precision="fp16")
    positions, scores, failed = predict(model, DataLoader([]), torch.device("cpu"), "softmax", [0.5] * 3,
                                        [0.5] * 3, precision="bf16")
    assert positions == [] and failed == []


def test_every_kind_of_weight_file_evaluates_and_a_pretrain_checkpoint_is_one_line(k400, tmp_path, capsys):
    """A finetune checkpoint-*.pt, a linear probe's checkpoint-*.pt (head BatchNorm + Linear, head.0 / head.1),
    weights.pt and .safetensors all evaluate; the probe's checkpoint predicts what its folded export predicts."""
    from videoconvmae.engine.tasks import build_task_model, fold_linear_probe

    saved = torch.load(k400.eval.checkpoint, weights_only=True)
    files = {"weights.pt": k400.eval.checkpoint, "safetensors": str(tmp_path / "weights.safetensors")}
    save_file(saved["model"], files["safetensors"], metadata={"config": json.dumps(saved["config"])})
    files["finetune checkpoint"] = str(tmp_path / "ft" / "checkpoint-00000002.pt")
    os.makedirs(tmp_path / "ft")
    torch.save({**saved, "optimizer": {}, "step": 2, "epoch": 0}, files["finetune checkpoint"])

    probe_cfg = from_dict({**saved["config"], "task": "linprobe"})
    torch.manual_seed(1)
    probe = build_task_model(probe_cfg, num_classes=5)
    probe.load_state_dict({k: v for k, v in saved["model"].items() if not k.startswith("head.")}, strict=False)
    with torch.no_grad():  # statistics far from (0, 1), so a head that skipped the BatchNorm would differ
        probe.head[0].running_mean.normal_(0, 0.5)
        probe.head[0].running_var.uniform_(0.2, 3.0)
    probe_state = probe.state_dict()
    assert "head.0.running_mean" in probe_state and "head.1.weight" in probe_state
    files["linprobe checkpoint"] = str(tmp_path / "lp" / "checkpoint-00000003.pt")
    os.makedirs(tmp_path / "lp")
    torch.save({"model": probe_state, "config": to_dict(probe_cfg), "optimizer": {}, "step": 3},
               files["linprobe checkpoint"])
    files["linprobe weights.pt"] = str(tmp_path / "lp" / "weights.pt")
    torch.save({"model": fold_linear_probe(probe.eval()), "config": to_dict(probe_cfg)}, files["linprobe weights.pt"])

    scores = {}
    for name, path in files.items():
        out = tmp_path / "out" / name.replace(" ", "_")
        run_eval(_with(k400, checkpoint=path, out_dir=str(out), num_temporal_views=1, num_spatial_views=1))
        scores[name] = load_predictions(out / "predictions.npz")[2]
    for name in ("safetensors", "finetune checkpoint"):
        np.testing.assert_array_equal(scores[name], scores["weights.pt"])
    np.testing.assert_allclose(scores["linprobe checkpoint"], scores["linprobe weights.pt"], rtol=0, atol=1e-5)
    assert not np.allclose(scores["linprobe checkpoint"], scores["weights.pt"], atol=1e-3)

    pre_cfg = from_dict({**saved["config"], "task": "pretrain"})
    torch.save({"model": build_task_model(pre_cfg).state_dict(), "config": to_dict(pre_cfg), "step": 1},
               tmp_path / "checkpoint-00000001.pt")
    with pytest.raises(ConfigError, match="has no classifier") as e:
        run_eval(_with(k400, checkpoint=str(tmp_path / "checkpoint-00000001.pt"), out_dir=str(tmp_path / "pre")))
    assert "\n" not in str(e.value)
    assert main(["eval", str(tmp_path / "checkpoint-00000001.pt"), f"eval.out_dir={tmp_path / 'pre'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: eval.checkpoint:") and "has no classifier" in err and "\n" not in err
