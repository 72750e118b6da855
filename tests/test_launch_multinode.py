"""Multi-node jobs on a REAL 2-node Slurm (tests/slurm_cluster.py: two slurmd on this host, nodes n1 / n2).

The same tiny video pretrain, with the same global batch, as 2 nodes x 1 task, as 1 node x 2 tasks, as the plain
sbatch template (srun, no submitit) and as a local 2-process torchrun ends with bitwise equal weights; the 2-node
job preempted mid-run and requeued ends equal to the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from slurm_cluster import LocalSlurm, unavailable_reason
from test_launch_slurm import _steps_logged, _tiny, _wait_for, released_when_requeued, use_local_polling

from videoconvmae.launch.cli import launch_task
from videoconvmae.launch.job import job_result
from videoconvmae.launch.sbatch import render_sbatch

pytestmark = pytest.mark.slurm

STEPS = 12  # 15 training clips, 2 ranks x batch 2: 3 steps per epoch, so the runs cross epochs
RUN = ["data.batch_size=2", f"train.max_steps={STEPS}", "optim.epochs=10", "train.ckpt_every_steps=1000"]
TWO_NODES = ["slurm.nodes=2", "slurm.tasks_per_node=1"]
ONE_NODE_TWO_TASKS = ["slurm.nodes=1", "slurm.tasks_per_node=2"]


@pytest.fixture(scope="module")
def slurm2(tmp_path_factory):
    """The 2-node cluster; jobs inherit this environment (sbatch --export=ALL), OMP_NUM_THREADS=1 included.

    One intra-op thread everywhere: torchrun sets OMP_NUM_THREADS=1 for its workers, while a Slurm task without
    CPU binding (TaskPlugin=task/none here) would use every core, and a convolution summed over a different
    number of threads rounds differently: bitwise equality needs the same thread count in every launcher.
    """
    reason = unavailable_reason(nodes=2)
    if reason:
        pytest.skip(f"no local 2-node Slurm: {reason}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm2"), nodes=2).start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", str(cluster.conf))
        env.setenv("OMP_NUM_THREADS", "1")
        use_local_polling(env)
        yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def two_node_run(slurm2, synth_root, tmp_path_factory):
    """The uninterrupted 2-node x 1-task run, submitted once for the module: (job, output folder)."""
    out = tmp_path_factory.mktemp("two_nodes") / "run"
    reg = out.parent / "jobs.jsonl"
    job = launch_task("pretrain", "pretrain_k400_tiny", _tiny(synth_root, out, *RUN, *TWO_NODES,
                                                          f"slurm.registry={reg}")).jobs[0]
    return job, out


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(output_dir / "weights.pt", weights_only=True)["model"]


def _assert_equal_weights(a_dir: Path, b_dir: Path, what: str) -> None:
    a, b = _weights(a_dir), _weights(b_dir)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what} differs from the 2-node run in {len(different)} tensors, e.g. {different[:3]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_slurm_and_torchrun(env: dict[str, str]) -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in env.items() if not (k.startswith("SLURM_") or k in drop)}


def _run_overrides(synth_root: Path, out: Path) -> list[str]:
    """The run's overrides without the slurm.* ones (what srun / torchrun run)."""
    return [o for o in _tiny(synth_root, out, *RUN) if not o.startswith("slurm.")]


def test_two_nodes_equal_one_node_the_sbatch_template_and_torchrun(slurm2, two_node_run, synth_root, tmp_path):
    job2, out2 = two_node_run
    out1 = tmp_path / "one_node"
    job1 = launch_task("pretrain", "pretrain_k400_tiny", _tiny(synth_root, out1, *RUN, *ONE_NODE_TWO_TASKS,
                                                          f"slurm.registry={tmp_path / 'jobs.jsonl'}")).jobs[0]
    # The plain sbatch template for the same resources: srun runs the CLI, which exports torch's variables.
    out_sb = tmp_path / "sbatch"
    script = tmp_path / "pretrain.sbatch"
    launch_overrides = [*_run_overrides(synth_root, out_sb), "slurm.gpus_per_node=0", "slurm.cpus_per_task=1",
                        "slurm.mem_gb=2", "slurm.timeout_min=30", *TWO_NODES]
    script.write_text(render_sbatch("pretrain", "pretrain_k400_tiny", launch_overrides))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    sb = subprocess.run(["sbatch", "--parsable", str(script)], cwd=tmp_path, env=env, capture_output=True,
                        text=True, check=True)
    sb_id = sb.stdout.strip().split(";")[0]

    # Meanwhile, here: torchrun with 2 local processes and the same global batch.
    out_tr = tmp_path / "torchrun"
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "videoconvmae", "pretrain", "pretrain_k400_tiny", *_run_overrides(synth_root, out_tr)],
        env=_without_slurm_and_torchrun(dict(os.environ)), capture_output=True, text=True, timeout=400)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]

    r2 = job_result(job2)
    assert r2["status"] == "completed" and r2["step"] == STEPS and r2["effective_batch"] == 4
    tasks = [r["job_task"] for r in job2.results()]
    assert [(t["global_rank"], t["node"], t["num_nodes"]) for t in tasks] == [(0, 0, 2), (1, 1, 2)]
    assert [t["hostname"] for t in tasks] == ["n1", "n2"]  # one rank per node, each on its own node
    r1 = job_result(job1)
    assert r1["status"] == "completed" and r1["step"] == STEPS
    assert {t["job_task"]["node"] for t in job1.results()} == {0}

    def sbatch_done():
        state = slurm2.run("sacct", "-n", "-X", "-j", sb_id, "-o", "State", "--parsable2", check=False).stdout
        return state.strip() if state.strip() in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") else None

    state = _wait_for(sbatch_done, 300, "the sbatch template job to end", interval=1)
    logs = "".join(p.read_text()[-2000:] for p in tmp_path.glob(f"*_{sb_id}.*"))
    assert state == "COMPLETED", logs
    assert slurm2.run("sacct", "-n", "-X", "-j", sb_id, "-o", "NNodes", "--parsable2").stdout.strip() == "2"

    _assert_equal_weights(out2, out1, "1 node x 2 tasks")
    _assert_equal_weights(out2, out_sb, "the sbatch template (srun)")
    _assert_equal_weights(out2, out_tr, "torchrun on 2 local processes")


def test_preempted_two_node_job_resumes_equal_to_the_uninterrupted_one(slurm2, two_node_run, synth_root, tmp_path):
    _, out_ref = two_node_run
    cut_dir = tmp_path / "cut"
    cut = launch_task("pretrain", "pretrain_k400_tiny", _tiny(synth_root, cut_dir, *RUN, *TWO_NODES,
                                                         f"slurm.registry={tmp_path / 'jobs.jsonl'}")).jobs[0]
    _wait_for(lambda: _steps_logged(cut_dir) >= 2, 240, "the 2-node run to reach step 2", job=cut)
    cut._interrupt()  # SIGTERM + SIGUSR2 to every task of the job, as a preemption
    _wait_for(released_when_requeued(slurm2, cut.job_id), 90, "the preempted job to be requeued", job=cut)
    result = job_result(cut)
    assert result["status"] == "completed" and result["step"] == STEPS
    assert [t["job_task"]["node"] for t in cut.results()] == [0, 1]

    events = [json.loads(ln) for ln in (cut_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    starts = [e for e in events if e.get("event") == "start"]
    assert len(starts) == 2, "the job was not requeued and resumed"
    stopped = [e for e in events if e.get("event") == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] == starts[1]["step"] < STEPS
    assert starts[1]["resumed_from"].endswith(f"checkpoint-{stopped[0]['step']:08d}.pt")
    # both ranks got the signal and agreed on the same step boundary (rank 1 logs nothing: read its job log)
    for rank in (0, 1):
        log = Path(cut.task(rank).paths.stdout).read_text()
        assert "SIGUSR2 received: checkpoint written at a step boundary; requeueing" in log, log[-2000:]
    _assert_equal_weights(out_ref, cut_dir, "the preempted and resumed 2-node run")
