"""`python -m videoconvmae` and `torchrun -m videoconvmae` end to end: 2 gloo processes = 1 process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_args(synth, out, batch):
    """A 3-step tiny video pretrain. SGD, not AdamW: the attention key bias' gradient is zero up to rounding, and
    AdamW scales that rounding noise (different in 1 and 2 processes) to lr-sized steps (measured 1.6e-6)."""
    k = synth / "k400"
    return ["pretrain", "pretrain_k400_tiny", f"data.root={k}", f"data.train_annotation={k}/train.csv",
            "data.val_annotation=", f"train.output_dir={out}", "data.input_size=32", "data.short_side_size=32",
            "data.num_frames=4", "data.sampling_rate=2", f"data.batch_size={batch}", "data.num_workers=0",
            "optim.name=sgd", "optim.lr=0.05", "optim.epochs=2", "optim.warmup_epochs=0", "train.max_steps=3",
            "train.ckpt_every_steps=1", "train.keep_last=3", "train.progress=false", "train.tensorboard=false",
            "train.resume=none"]


def run(*cmds: list[str]) -> list[subprocess.CompletedProcess]:
    """Run the commands side by side (each process pays seconds of imports; one intra-op thread each, so running
    them together changes no number) and return them once all have succeeded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "always"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for cmd in cmds]
    done = []
    try:
        for cmd, proc in zip(cmds, procs):
            stdout, stderr = proc.communicate(timeout=600)
            done.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for d in done:
        assert d.returncode == 0, d.stderr[-3000:]
    return done


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_and_print_once(synth_root, tmp_path):
    one, two = run([sys.executable, "-m", "videoconvmae", *pretrain_args(synth_root, tmp_path / "one", 4)],
                   [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                    str(free_port()), "-m", "videoconvmae", *pretrain_args(synth_root, tmp_path / "two", 2)])
    results = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1 and results[0]["step"] == 3 and results[0]["status"] == "completed", two.stdout
    assert json.loads(one.stdout.splitlines()[-1])["effective_batch"] == results[0]["effective_batch"] == 4
    # the depthwise weights' layout matches their gradients': DDP copies nothing and says nothing
    assert "Grad strides do not match" not in two.stderr
    a = torch.load(tmp_path / "one" / "weights.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "weights.pt", weights_only=True)["model"]
    step1 = torch.load(tmp_path / "one" / "checkpoint-00000001.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    assert max(float((a[k] - step1[k]).abs().max()) for k in a) > 1e-3  # the two steps in between moved them


def test_python_dash_m_runs_the_cli():
    (done,) = run([sys.executable, "-m", "videoconvmae", "models", "--filter", "videoconvmae_tiny"])
    assert done.stdout.split() == ["videoconvmae_tiny_cls", "videoconvmae_tiny_pretrain"]
