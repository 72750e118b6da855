"""The launch layer against a REAL single-node Slurm (tests/slurm_cluster.py starts munged, MariaDB, slurmdbd,
slurmctld and slurmd for this module and stops them after).

The plumbing tests use tests/launch_toys.py (the engine's contract in a few lines, a second per job); the
end-to-end tests further down run the real engine and eval on the synthetic dataset.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import cloudpickle
import launch_toys
import pytest
from slurm_cluster import LocalSlurm, unavailable_reason

from videoconvmae.cli import main
from videoconvmae.launch import registry
from videoconvmae.launch.cli import wait_and_report
from videoconvmae.launch.submit import launch

pytestmark = pytest.mark.slurm
cloudpickle.register_pickle_by_value(launch_toys)  # the job process has no tests/ on its path

CPU_JOB = ["slurm.gpus_per_node=0", "slurm.cpus_per_task=1", "slurm.mem_gb=2", "slurm.timeout_min=30"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no local Slurm: {reason}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def _wait_for(predicate, timeout_s: float, what: str, interval: float = 0.3):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _squeue_state(cluster: LocalSlurm, job_id: str) -> str:
    return cluster.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()


def _release_if_requeued(cluster: LocalSlurm, job_id: str) -> bool:
    """A requeued job waits ~130 s (Reason=BeginTime); start it now. True once it was seen pending again."""
    if _squeue_state(cluster, job_id) == "PENDING":
        cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
        return True
    return False


def test_cluster_runs_a_batch_job(slurm, tmp_path):
    out = tmp_path / "hostname.out"
    r = slurm.run("sbatch", "--parsable", "-o", str(out), "--wrap", "hostname")
    job_id = r.stdout.strip().split(";")[0]
    _wait_for(lambda: out.exists() and out.read_text().strip(), 60, "the hostname job's output")
    state = _wait_for(lambda: (slurm.run("sacct", "-n", "-X", "-j", job_id, "-o", "State", "--parsable2",
                                         check=False).stdout.strip() or None), 60, "sacct to know the job")
    _wait_for(lambda: "COMPLETED" in slurm.run("sacct", "-n", "-X", "-j", job_id, "-o", "State", "--parsable2",
                                                check=False).stdout, 60, f"COMPLETED (last: {state})")


def test_preempted_job_resumes_at_the_step_boundary(slurm, tmp_path):
    steps = 12
    launched = launch("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", f"train.max_steps={steps}",
                                         *CPU_JOB, f"slurm.registry={tmp_path / 'jobs.jsonl'}"],
                      entries={"train": launch_toys.toy_run_task})
    job = launched.jobs[0]
    state_path = tmp_path / "run" / "toy_state.json"
    _wait_for(lambda: state_path.exists() and json.loads(state_path.read_text())["step"] >= 3, 90,
              "the toy run to reach step 3")
    job._interrupt()  # preemption: SIGTERM then SIGUSR2, as Slurm does
    _wait_for(lambda: _release_if_requeued(slurm, job.job_id), 60, "the job to be requeued")
    result = job.result()
    assert result["status"] == "completed"
    assert result["step"] == steps
    assert result["value"] == launch_toys.expected_value(steps)  # nothing lost, nothing run twice
    state = json.loads(state_path.read_text())
    assert state["starts"] == 2 and state["restart_count"] == "1"
    log = Path(job.paths.stdout).read_text()
    assert "checkpoint written at a step boundary; requeueing" in log


def test_failed_job_is_one_readable_line(slurm, tmp_path, capsys):
    launched = launch("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", "data.root=/no/such/folder",
                                         *CPU_JOB, f"slurm.registry={tmp_path / 'jobs.jsonl'}"],
                      entries={"train": launch_toys.toy_failing_task})
    assert wait_and_report(launched) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    job = launched.jobs[0]
    assert err.startswith(f"error: job {job.job_id} (pretrain) failed: FileNotFoundError: data.root: folder "
                          "'/no/such/folder' does not exist")
    log = re.search(r"\[log: (.+)\]$", err).group(1)
    assert Path(log).is_file() and "FileNotFoundError" in Path(log).read_text()

    # `videoconvmae jobs` shows it FAILED with the same error
    assert main(["jobs", "--registry", str(tmp_path / "jobs.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "FAILED" in out and "error: FileNotFoundError: data.root" in out


def test_sweep_is_one_array_and_jobs_lists_it(slurm, tmp_path, capsys):
    reg = tmp_path / "jobs.jsonl"
    launched = launch("pretrain", None, [f"train.output_dir={tmp_path / 'sweep'}", "train.max_steps=2", *CPU_JOB,
                                         f"slurm.registry={reg}"],
                      sweep=[("optim.base_lr", ["1e-4", "2e-4"])], entries={"train": launch_toys.toy_run_task})
    ids = [str(j.job_id) for j in launched.jobs]
    assert len(ids) == 2 and ids[0].split("_")[0] == ids[1].split("_")[0] and ids[0] != ids[1]
    results = [j.result() for j in launched.jobs]
    assert [r["lr"] for r in results] == [1e-4, 2e-4]
    assert {Path(r["checkpoint"]).parent.name for r in results} == {"optim.base_lr=1e-4", "optim.base_lr=2e-4"}

    def listed():
        assert main(["jobs", "--registry", str(reg)]) == 0
        out = capsys.readouterr().out
        return out if all(re.search(rf"^{re.escape(i)}\s.*COMPLETED", out, re.M) for i in ids) else None

    out = _wait_for(listed, 60, "sacct to report both array tasks COMPLETED", interval=2)
    assert "optim.base_lr=1e-4" in out and str(tmp_path / "sweep") in out


def test_cancelled_job_reports_state(slurm, tmp_path, capsys):
    launched = launch("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=200", *CPU_JOB,
                                         f"slurm.registry={tmp_path / 'jobs.jsonl'}"],
                      entries={"train": launch_toys.toy_run_task})
    job = launched.jobs[0]
    _wait_for(lambda: (tmp_path / "run" / "toy_state.json").exists(), 90, "the job to start")
    subprocess.run(["scancel", str(job.job_id)], check=True)
    assert wait_and_report(launched) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CANCELLED" in err and f"[log: {job.paths.stderr}]" in err
    assert registry.read(str(tmp_path / "jobs.jsonl"))[0]["job_id"] == str(job.job_id)
