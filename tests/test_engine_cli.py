"""The run commands as a user meets them: every failure is one line (traceback in the run's log.txt), a signal
saves and exits cleanly, an incompatible resume names the keys."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from videoconvmae.cli import main
from videoconvmae.engine.checkpoint import list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parent.parent
QUIET = ["train.progress=false", "train.tensorboard=false", "train.log_every_steps=1"]


def image_args(synth, out, *extra):
    return [f"data.train_annotation={synth}/imagenet/train", "data.val_annotation=", f"train.output_dir={out}",
            "data.input_size=32", "data.batch_size=4", *QUIET, *extra]


def video_args(synth, out, *extra):
    k = synth / "k400"
    return [f"data.root={k}", f"data.train_annotation={k}/train.csv", "data.val_annotation=",
            f"train.output_dir={out}", "data.input_size=32", "data.num_frames=4", "data.sampling_rate=2",
            "data.batch_size=5", "data.num_workers=0", *QUIET, *extra]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_an_unexpected_error_is_one_line_and_its_traceback_goes_to_log_txt(tmp_path, monkeypatch, capsys):
    from videoconvmae.engine import tasks

    def broken(cfg, stop_event=None):
        raise RuntimeError("the disk went away\nsecond line of detail")

    monkeypatch.setattr(tasks, "run_task", broken)
    argv = ["pretrain", "pretrain_k400_tiny", f"train.output_dir={tmp_path}"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pretrain failed: RuntimeError: the disk went away" in err
    assert f"traceback in {tmp_path / 'log.txt'}" in err
    log = (tmp_path / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "second line of detail" in log
    monkeypatch.setenv("VIDEOCONVMAE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="the disk went away"):
        main(argv)


def test_a_data_error_in_a_loader_worker_is_one_line_and_the_process_exits(synth_root, tmp_path):
    k = synth_root / "k400"
    good = sorted((k / "train").glob("*.mp4"))[0].relative_to(k)
    listing = tmp_path / "train.txt"
    listing.write_text(f"{good} 0\nnot/there.mp4 1\n")
    args = video_args(synth_root, tmp_path / "run", f"data.train_annotation={listing}", "data.batch_size=2",
                      "data.num_workers=1", "data.max_retries=0")
    done = subprocess.run([sys.executable, "-m", "videoconvmae", "pretrain", "pretrain_k400_tiny", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=240)  # its worker must not outlive it
    assert done.returncode == 2, done.stderr
    err = done.stderr
    (line,) = error_lines(err)
    assert "item 1 and its 0 replacements are all unreadable" in line and "not/there.mp4" in line
    assert "Traceback" not in err


def test_auto_resume_into_an_incompatible_checkpoint_is_one_line(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "pretrain_k400_tiny", *video_args(synth_root, out, "train.max_steps=1")]) == 0
    capsys.readouterr()
    for change in ("model.tubelet=4", "model.arch=videoconvmae_small"):
        assert main(["pretrain", "pretrain_k400_tiny", *video_args(synth_root, out, "train.max_steps=2", change,
                                                                   "train.resume_changes=apply")]) == 2
        err = capsys.readouterr().err
        (line,) = error_lines(err)
        assert f"{change.split('=')[0]} " in line and "start fresh with a new train.output_dir" in line, line
        assert "Traceback" not in err


SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(scope="module")
def long_runs(synth_root, tmp_path_factory):
    """One long pretrain process per signal, all started at once (each start is seconds of imports): sig ->
    (process, output folder). Whatever a test leaves running is killed at the end of the module."""
    runs = {}
    for sig in SIGNALS:
        out = tmp_path_factory.mktemp(f"signal_{sig.name}") / "run"
        cmd = [sys.executable, "-m", "videoconvmae", "pretrain", "pretrain_in1k_tiny",
               *image_args(synth_root, out, "optim.epochs=500", "data.num_workers=1", "train.ckpt_every_steps=10000")]
        with open(out.parent / "stdout", "w") as stdout, open(out.parent / "stderr", "w") as stderr:  # no pipe to fill
            runs[sig] = subprocess.Popen(cmd, cwd=REPO, stdout=stdout, stderr=stderr, start_new_session=True), out
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signal_saves_at_the_next_step_and_exits_cleanly(long_runs, sig):
    proc, out = long_runs[sig]
    deadline = time.monotonic() + 240
    metrics = out / "metrics.jsonl"
    while not (metrics.is_file() and any('"step": 2' in line for line in metrics.read_text().splitlines())
               and '"event"' not in metrics.read_text().splitlines()[-1]):
        assert proc.poll() is None and time.monotonic() < deadline, (out.parent / "stderr").read_text()[-3000:]
        time.sleep(0.2)
    if sig == signal.SIGINT:  # Ctrl-C in a terminal: the whole process group, DataLoader workers included
        os.killpg(proc.pid, sig)
    else:  # `kill PID`: the main process only
        proc.send_signal(sig)
    proc.wait(timeout=240)
    stdout, stderr = (out.parent / "stdout").read_text(), (out.parent / "stderr").read_text()
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and f"stopped by {sig.name} at step" in stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["status"] == "stopped" and result["step"] >= 2
    (ckpt,) = list_checkpoints(out)  # saved at the step boundary, not lost until ckpt_every_steps
    assert load_checkpoint(ckpt)["step"] == result["step"]
    assert "[stopped]" in (out / "log.txt").read_text()


def test_a_val_label_the_head_does_not_have_is_one_line_before_training(synth_root, tmp_path, capsys):
    import shutil

    val = tmp_path / "val"
    shutil.copytree(synth_root / "imagenet/val", val)
    extra = val / "zzz_extra_class"
    extra.mkdir()
    shutil.copy(next((val / sorted(p.name for p in val.iterdir())[0]).iterdir()), extra / "x.JPEG")
    args = [*image_args(synth_root, tmp_path / "run"), f"data.val_annotation={val}", "data.num_workers=0",
            "model.pretrained="]
    assert main(["finetune", "finetune_in1k_tiny", *args]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "label 5 (" in line and "zzz_extra_class" in line and "not one of the model's 5 classes" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # before any step (was an IndexError mid-run)
