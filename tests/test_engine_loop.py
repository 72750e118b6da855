"""The step loop on a toy masked autoencoder: loss falls, exact resume, non-finite steps, accumulation, DDP."""

import socket
import threading

import pytest
import torch
from engine_toy import ddp_worker, read_metrics, toy_config, toy_parts, train

from videoconvmae.config import from_dict, load_config, to_dict
from videoconvmae.engine.checkpoint import find_resume, list_checkpoints, load_checkpoint
from videoconvmae.engine.distributed import DistInfo
from videoconvmae.engine.logging import RunLogger
from videoconvmae.engine.trainer import NonFiniteLossError
from videoconvmae.errors import ConfigError

ONE = DistInfo()


def test_toy_loss_falls_and_logs(tmp_path):
    result, trainer = train(toy_config(tmp_path, "optim.epochs=6"))
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r and "event" not in r]
    assert result["status"] == "completed" and result["step"] == 48 == len(losses)
    assert sum(losses[-8:]) / 8 < 0.5 * sum(losses[:8]) / 8
    start = next(r for r in read_metrics(tmp_path) if r.get("event") == "start")
    assert start["effective_batch"] == 8 and start["lr"] == 0.01 and start["total_steps"] == 48


def test_lr_scales_with_effective_batch(tmp_path):
    cfg = toy_config(tmp_path, "optim.lr=null", "optim.base_lr=0.0016", "optim.accum_steps=2", "optim.epochs=1")
    result, _ = train(cfg)
    assert result["effective_batch"] == 16 and result["lr"] == pytest.approx(0.0016 * 16 / 256)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("interrupt", ["max_steps", "stop_event"])
def test_interrupted_and_resumed_run_matches_uninterrupted_bitwise(tmp_path, interrupt):
    _, full = train(toy_config(tmp_path / "full"))
    out = tmp_path / "split"
    if interrupt == "max_steps":
        first, _ = train(toy_config(out, "train.max_steps=11"))
        assert first["status"] == "completed" and first["step"] == 11
    else:
        cfg = toy_config(out)
        parts = toy_parts(cfg)
        stop = threading.Event()
        inner = parts.loss_fn
        calls = {"n": 0}

        def loss_fn(model, batch):  # the preemption signal arrives during step 13
            calls["n"] += 1
            if calls["n"] == 13:
                stop.set()
            return inner(model, batch)

        parts.loss_fn = loss_fn
        first, _ = train(cfg, stop, parts)
        assert first["status"] == "stopped" and first["step"] == 13
    ckpt = load_checkpoint(first["checkpoint"])
    assert ckpt["epoch"] == 1 and 0 < ckpt["epoch_position"] < 64  # mid-epoch
    second, resumed = train(toy_config(out))
    assert second["status"] == "completed" and second["step"] == 24 and resumed.resumed_from
    assert_same(weights(full.model), weights(resumed.model))
    assert_same(full.optimizer.state_dict()["state"][0], resumed.optimizer.state_dict()["state"][0])


def test_grad_accumulation_matches_large_batch(tmp_path):
    _, big = train(toy_config(tmp_path / "big", "optim.epochs=1"), parts=toy_parts(toy_config(tmp_path), random=False))
    cfg = toy_config(tmp_path / "acc", "optim.epochs=1", "data.batch_size=4", "optim.accum_steps=2")
    _, acc = train(cfg, parts=toy_parts(cfg, random=False))
    for k, v in weights(big.model).items():
        torch.testing.assert_close(acc.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_nonfinite_loss_step_is_skipped_and_counted(tmp_path):
    cfg = toy_config(tmp_path / "ref", "train.max_steps=2")
    _, ref = train(cfg)
    cfg = toy_config(tmp_path / "nan", "train.max_steps=3")
    parts = toy_parts(cfg)
    parts.model.nan_at = {3}
    result, skipped = train(cfg, parts=parts)
    assert result["status"] == "completed" and result["nonfinite_steps"] == 1
    assert_same(weights(ref.model), weights(skipped.model))  # the third step changed nothing
    assert all(torch.isfinite(v).all() for v in skipped.model.state_dict().values())
    assert read_metrics(tmp_path / "nan")[-2]["nonfinite_steps"] == 1


def test_consecutive_nonfinite_losses_stop_with_clear_message(tmp_path):
    cfg = toy_config(tmp_path, "train.max_nonfinite_steps=3")
    parts = toy_parts(cfg)
    parts.model.nan_at = set(range(2, 100))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps with a non-finite loss"):
        train(cfg, parts=parts)


def test_checkpoint_holds_config_and_full_state_beside_yaml(tmp_path):
    cfg = toy_config(tmp_path, "optim.epochs=1", "train.ckpt_every_steps=3", "train.keep_last=2")
    result, _ = train(cfg)
    ckpts = list_checkpoints(tmp_path)
    assert [p.name for p in ckpts] == ["checkpoint-00000008.pt", "checkpoint-00000006.pt"]  # keep_last=2
    ckpt = load_checkpoint(ckpts[0])
    assert from_dict(ckpt["config"]) == cfg and ckpt["code_version"]
    assert load_config(str(tmp_path / "config.yaml")) == cfg
    rng = ckpt["rng"]["ranks"][0]
    assert set(rng) >= {"python", "numpy", "torch", "generators"} and "mask" in rng["generators"]
    exported = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert exported["config"] == to_dict(cfg)
    from safetensors.torch import load_file

    st = load_file(tmp_path / "weights.safetensors")
    assert st.keys() == exported["model"].keys()
    assert all(torch.equal(st[k], exported["model"][k]) for k in st)


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        train(toy_config(tmp_path, "train.precision=fp16"))


def test_bf16_autocast_runs_on_cpu(tmp_path):
    result, trainer = train(toy_config(tmp_path, "train.precision=bf16", "train.max_steps=4"))
    assert result["step"] == 4 and all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())


def test_resume_auto_skips_damaged_newest_checkpoint(tmp_path):
    train(toy_config(tmp_path, "train.max_steps=5", "train.ckpt_every_steps=2", "train.keep_last=5"))
    newest = list_checkpoints(tmp_path)[0]
    newest.write_bytes(newest.read_bytes()[: 1000])  # a write cut short outside our atomic writer
    with pytest.warns(UserWarning, match="skipping damaged checkpoint .*checkpoint-00000005.pt"):
        path, ckpt = find_resume(tmp_path)
    assert path.name == "checkpoint-00000004.pt" and ckpt["step"] == 4
    with pytest.warns(UserWarning, match="skipping damaged"):
        _, trainer = train(toy_config(tmp_path, "train.max_steps=6"))
    assert trainer.resumed_from.endswith("checkpoint-00000004.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_with_half_batch_match_one_process(tmp_path):
    cfg = toy_config(tmp_path / "one", "optim.epochs=2", "train.resume=none")
    _, one = train(cfg, parts=toy_parts(cfg, random=False))
    torch.multiprocessing.spawn(ddp_worker, args=(2, free_port(), str(tmp_path / "two"), 4), nprocs=2)
    two = load_checkpoint(list_checkpoints(tmp_path / "two")[0])
    assert two["step"] == 16 and two["rng"]["world_size"] == 2
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(two["model"][k], v, rtol=1e-5, atol=1e-6)


def test_progress_moves_every_step_and_rows_carry_wall_time_and_window_mean(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(RunLogger, "progress", lambda self, steps, postfix=None: calls.append(steps))
    _, trainer = train(toy_config(tmp_path / "a", "train.log_every_steps=4", "optim.epochs=2"))
    assert calls.count(1) == trainer.step == 16
    rows = [r for r in read_metrics(tmp_path / "a") if "event" not in r]
    each = [r for r in (train(toy_config(tmp_path / "b", "train.log_every_steps=1", "optim.epochs=2")) and
                        read_metrics(tmp_path / "b")) if "event" not in r]
    assert [r["step"] for r in rows] == [4, 8, 12, 16] and len(each) == 16
    for row in rows:  # loss_avg: the mean of the window's step losses; loss: the last step's
        window = [r["loss"] for r in each if row["step"] - 4 < r["step"] <= row["step"]]
        assert row["loss"] == window[-1] and abs(row["loss_avg"] - sum(window) / 4) < 1e-6
        assert row["time"] > 1.7e9 and row["elapsed_s"] >= 0
    assert rows[-1]["elapsed_s"] >= rows[0]["elapsed_s"]
