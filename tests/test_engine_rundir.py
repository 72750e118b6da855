"""One folder, one run: resume never changes the recipe silently, the run lock, pruning only this run's
checkpoints, leftovers of a killed writer, non-finite weights never exported."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_toy import read_metrics, toy_config, toy_parts, train

from videoconvmae.config import load_config
from videoconvmae.engine.checkpoint import list_checkpoints, load_checkpoint
from videoconvmae.engine.trainer import NonFiniteLossError
from videoconvmae.errors import ConfigError

TESTS = Path(__file__).parent


def step_lrs(out_dir) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in read_metrics(out_dir) if "event" not in r}


def test_resume_with_a_changed_lr_is_one_line_naming_it(tmp_path):
    train(toy_config(tmp_path, "train.max_steps=5"))
    with pytest.raises(ConfigError) as err:
        train(toy_config(tmp_path, "optim.lr=0.05"))
    msg = str(err.value)
    assert "\n" not in msg and "optim.lr 0.01 -> 0.05" in msg
    assert "train.output_dir" in msg and "train.resume_changes=apply" in msg
    assert load_config(str(tmp_path / "config.yaml")).optim.lr == 0.01  # still the config that ran


def test_resume_changes_apply_reaches_the_schedule(tmp_path):
    out = tmp_path / "run"
    train(toy_config(out, "train.max_steps=5"))
    train(toy_config(out, "optim.lr=0.05", "train.resume_changes=apply"))
    train(toy_config(tmp_path / "ref", "optim.lr=0.05"))
    lrs, ref = step_lrs(out), step_lrs(tmp_path / "ref")
    assert lrs[5] == pytest.approx(ref[5] / 5)  # the first 5 steps ran at 0.01
    for step in range(6, 25):  # then exactly the schedule of a 0.05 run
        assert lrs[step] == pytest.approx(ref[step], rel=1e-9), step
    event = next(r for r in read_metrics(out) if r.get("event") == "resume_changes")
    assert "optim.lr 0.01 -> 0.05" in event["changes"]
    assert load_config(str(out / "config.yaml")).optim.lr == 0.05
    assert load_checkpoint(list_checkpoints(out)[0])["config"]["optim"]["lr"] == 0.05


def test_extending_epochs_continues_on_the_longer_cosine(tmp_path):
    train(toy_config(tmp_path / "run", "optim.epochs=2"))  # 16 steps, the schedule ends at lr 0
    train(toy_config(tmp_path / "run", "optim.epochs=4"))  # no recipe error: an extension may change
    train(toy_config(tmp_path / "ref", "optim.epochs=4"))
    lrs, ref = step_lrs(tmp_path / "run"), step_lrs(tmp_path / "ref")
    assert len(lrs) == 32 and min(lrs[s] for s in range(17, 32)) > 0  # not the old schedule's lr 0
    assert all(lrs[s] == pytest.approx(ref[s], rel=1e-9) for s in range(17, 33))


def test_resume_into_another_model_names_the_mismatch(tmp_path):
    train(toy_config(tmp_path, "train.max_steps=3"))
    cfg = toy_config(tmp_path, "train.resume_changes=apply")
    parts = toy_parts(cfg)
    from engine_toy import ToyMAE

    parts.model = ToyMAE(hidden=48)  # "another model size"
    with pytest.raises(ConfigError, match=r"does not fit this run .*enc.0.weight \(32, 16\) vs \(48, 16\).*"
                                          r"start fresh with a new train.output_dir"):
        train(cfg, parts=parts)


HOLDER = "import sys; sys.path.insert(0, sys.argv[1]); from engine_toy import hold_run; hold_run(sys.argv[2])"


def test_lock_refuses_a_second_process_and_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(TESTS), str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert "holding" in iter(lambda: holder.stdout.readline().strip(), "")  # [start] ... lines come first
        with pytest.raises(ConfigError) as refused:  # the second process is this one: one interpreter start less
            train(toy_config(out))
        assert f"in use by pid {holder.pid}" in str(refused.value) and "another train.output_dir" in str(refused.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out / "run.lock").is_file()  # left behind by the kill
    result, trainer = train(toy_config(out, "train.max_steps=2"))
    assert result["status"] == "completed"
    assert any(f"stale lock {out / 'run.lock'} of pid {holder.pid}" in n for n in trainer.notes)
    assert (out / "run.lock").read_text() == ""  # released


def test_a_fresh_run_into_another_runs_folder_is_refused(tmp_path):
    train(toy_config(tmp_path, "train.max_steps=6", "train.ckpt_every_steps=3"))
    with pytest.raises(ConfigError, match="holds another run .*train.resume=auto.*train.overwrite=true"):
        train(toy_config(tmp_path, "train.resume=none", "train.max_steps=2"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000006.pt", "checkpoint-00000003.pt"]
    result, trainer = train(toy_config(tmp_path, "train.resume=none", "train.overwrite=true", "optim.lr=0.02",
                                       "train.max_steps=4", "train.ckpt_every_steps=3"))
    # before: the new run's checkpoints were pruned as they were written (the old step 6 ranked higher)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000004.pt", "checkpoint-00000003.pt"]
    assert load_checkpoint(list_checkpoints(tmp_path)[0])["config"]["optim"]["lr"] == 0.02
    assert torch.load(tmp_path / "weights.pt", weights_only=True)["config"]["optim"]["lr"] == 0.02
    assert sum(1 for r in read_metrics(tmp_path) if r.get("event") == "start") == 1  # the old log went too


def test_a_damaged_higher_step_file_neither_evicts_good_checkpoints_nor_restarts(tmp_path):
    train(toy_config(tmp_path, "train.max_steps=5", "train.ckpt_every_steps=2", "train.keep_last=1"))
    (tmp_path / "checkpoint-00000099.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        _, second = train(toy_config(tmp_path, "train.max_steps=8", "train.ckpt_every_steps=2",
                                     "train.keep_last=1"))
    assert second.resumed_from.endswith("checkpoint-00000005.pt")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000099.pt", "checkpoint-00000008.pt"]
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        _, third = train(toy_config(tmp_path, "train.max_steps=9", "train.keep_last=1"))
    assert third.resumed_from.endswith("checkpoint-00000008.pt") and third.step == 9


def test_auto_resume_when_no_checkpoint_loads_is_refused(tmp_path):
    (tmp_path / "checkpoint-00000007.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="none of the 1 checkpoints .* loads"):
        train(toy_config(tmp_path, "train.max_steps=2"))


def test_temp_files_of_a_killed_writer_are_removed(tmp_path):
    leftover = tmp_path / ".checkpoint-00000004.pt.tmp4242"
    leftover.write_bytes(b"half a checkpoint")
    _, trainer = train(toy_config(tmp_path, "train.max_steps=1"))
    assert not leftover.exists() and any(leftover.name in n for n in trainer.notes)


def test_nonfinite_weights_are_never_exported(tmp_path):
    with pytest.raises(NonFiniteLossError, match="weights became non-finite"):
        train(toy_config(tmp_path, "optim.lr=inf", "train.max_steps=3"))
    assert not (tmp_path / "weights.pt").exists() and not (tmp_path / "weights.safetensors").exists()


def test_a_skipped_step_does_not_log_loss_zero(tmp_path):
    cfg = toy_config(tmp_path, "train.max_steps=4")
    parts = toy_parts(cfg)
    parts.model.nan_at = {3}
    train(cfg, parts=parts)
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path) if "event" not in r}
    assert losses[3] == "nan" and all(isinstance(losses[s], float) and losses[s] > 0 for s in (1, 2, 4))


def test_a_full_disk_keeps_the_previous_checkpoint_and_a_consistent_weights_pair(tmp_path, monkeypatch):
    train(toy_config(tmp_path, "optim.epochs=1", "train.ckpt_every_steps=4"))  # exports weights of run 1
    before = {n: (tmp_path / n).read_bytes() for n in ("weights.pt", "weights.safetensors")}
    from videoconvmae.engine import checkpoint as ckpt_io

    real_save = ckpt_io.torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 12:
            raise OSError(28, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_io.torch, "save", full_disk)
    with pytest.raises(RuntimeError, match=r"could not write checkpoint .*checkpoint-00000012.pt: \[Errno 28\] No "
                                           r"space left on device \(the previous checkpoint, checkpoint-00000008.pt"):
        train(toy_config(tmp_path, "optim.epochs=2", "train.ckpt_every_steps=4"))
    assert load_checkpoint(list_checkpoints(tmp_path)[0])["step"] == 8

    def no_room_for_safetensors(f):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_io, "safetensors_bytes", lambda *a, **k: b"x" * 10)
    real_write_all = ckpt_io.atomic_write_all
    monkeypatch.setattr(ckpt_io, "atomic_write_all", lambda files: real_write_all(
        files if len(files) == 1 else [files[0], (files[1][0], no_room_for_safetensors)]))
    monkeypatch.setattr(ckpt_io.torch, "save", real_save)
    with pytest.raises(OSError, match="No space left"):
        train(toy_config(tmp_path, "optim.epochs=2", "train.ckpt_every_steps=4"))
    # before: weights.pt was the new run's and weights.safetensors the old one's
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_max_skip_fraction_is_checked_as_the_run_goes_naming_the_worst_files(synth_root, tmp_path):
    from videoconvmae.engine.tasks import run_task
    from videoconvmae.errors import DataError

    k = synth_root / "k400"
    lines = (k / "train.txt").read_text().splitlines()
    broken = [f"gone/{line}" if i % 3 else line for i, line in enumerate(lines)]  # 2 of 3 files missing
    (tmp_path / "train.txt").write_text("\n".join(broken) + "\n")
    cfg = load_config("pretrain_k400_tiny", [
        f"data.root={k}", f"data.train_annotation={tmp_path / 'train.txt'}", "data.val_annotation=",
        f"train.output_dir={tmp_path / 'run'}", "data.input_size=32", "data.num_frames=4", "data.batch_size=5",
        "data.num_workers=0", "data.skip_check_min_reads=5", "data.max_skip_fraction=0.2", "optim.epochs=4",
        "train.progress=false", "train.tensorboard=false", "train.log_every_steps=1"])
    with pytest.raises(DataError, match=r"exceeds data.max_skip_fraction=0.2; worst: .*gone/.*\(\d+x\)"):
        run_task(cfg)
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if "event" not in r]
    assert max(steps, default=0) < 3  # stopped inside the first epoch (3 steps), not at its end
