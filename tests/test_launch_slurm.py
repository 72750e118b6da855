"""The launch layer against a REAL single-node Slurm (tests/slurm_cluster.py starts munged, MariaDB, slurmdbd,
slurmctld and slurmd for this module and stops them after).

The plumbing tests use tests/launch_toys.py (the engine's contract in a few lines, a second per job); the
end-to-end tests further down run the real engine and eval on the synthetic dataset.
"""

from __future__ import annotations

import json
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
from videoconvmae.launch.cli import launch_task, wait_and_report
from videoconvmae.launch.job import job_result

pytestmark = pytest.mark.slurm
cloudpickle.register_pickle_by_value(launch_toys)  # the job process has no tests/ on its path

CPU_JOB = ["slurm.gpus_per_node=0", "slurm.cpus_per_task=1", "slurm.mem_gb=2", "slurm.timeout_min=30"]


# submitit waits this long for the result file of a job Slurm reports ended (a slow shared filesystem); a job
# killed before writing one (cancelled, timed out too often) costs the whole wait. Here the jobs write to a
# local disk: 2 s instead of submitit's 15.
RESULTS_TIMEOUT_S = 2
# submitit asks sacct about a job without a result file at most every half of the newest job's age (up to 10 min),
# sparing a shared slurmdbd; this one is local and idle: every 2 s (the back-off's own minimum).
SACCT_EVERY_S = 2


def use_local_polling(env: pytest.MonkeyPatch) -> None:
    import submitit
    import submitit.core.core

    env.setattr(submitit.core.core.Job, "_results_timeout_s", RESULTS_TIMEOUT_S)
    env.setattr(submitit.SlurmJob.watcher, "_delay_s", SACCT_EVERY_S)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no local Slurm: {reason}")
    # Up to 4 jobs share a CPU: the eval array (eval_array_jobs) runs beside the plumbing tests, whose toy jobs
    # mostly sleep, instead of holding both CPUs until they start.
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), share_cpus=4).start()
    with pytest.MonkeyPatch.context() as env:  # jobs get this environment (sbatch --export=ALL)
        env.setenv("SLURM_CONF", str(cluster.conf))
        # One intra-op thread per job: jobs run side by side on the 2 cores, and an OpenMP team whose threads wait
        # for a core at every parallel region made a 24-step pretrain several times slower.
        env.setenv("OMP_NUM_THREADS", "1")
        use_local_polling(env)
        yield cluster
    cluster.stop()


def _wait_for(predicate, timeout_s: float, what: str, interval: float = 0.3, job=None):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    logs = ""
    if job is not None:  # what the job said, to diagnose from the test report alone
        logs = "".join(f"\n--- {p}:\n" + Path(p).read_text()[-3000:] for p in (job.paths.stdout, job.paths.stderr)
                       if Path(p).exists())
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{logs}")


def _squeue_state(cluster: LocalSlurm, job_id: str) -> str:
    return cluster.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()


# slurmd rejects a job credential created no later than the second its previous attempt's credential was revoked
# ("Killing non-startable batch JobId=15: Job credential revoked", seen on a fresh clone: a release 65 ms after the
# requeue made the job FAILED). Slurm's own ~130 s BeginTime after a requeue hides this; a release must wait it out.
CREDENTIAL_REVOKE_S = 2.0


def released_when_requeued(cluster: LocalSlurm, job_id: str):
    """A predicate for ``_wait_for``: a requeued job waits ~130 s (Reason=BeginTime); start it now. True once it
    was released: seen PENDING again, its previous attempt exited (PENDING shows while it still runs `scontrol
    requeue`, and a run started beside it would find its run lock held), and CREDENTIAL_REVOKE_S after that."""
    pending_since: float | None = None  # when it was first seen PENDING with its previous attempt gone

    def predicate() -> bool:
        nonlocal pending_since
        if _squeue_state(cluster, job_id) != "PENDING" or cluster.job_processes(job_id):
            pending_since = None
            return False
        if pending_since is None:
            pending_since = time.monotonic()
        if time.monotonic() - pending_since < CREDENTIAL_REVOKE_S:
            return False
        cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
        return True

    return predicate


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
    launched = launch_task("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", f"train.max_steps={steps}",
                                         *CPU_JOB, f"slurm.registry={tmp_path / 'jobs.jsonl'}"],
                      entries={"train": launch_toys.toy_run_task})
    job = launched.jobs[0]
    state_path = tmp_path / "run" / "toy_state.json"
    _wait_for(lambda: state_path.exists() and json.loads(state_path.read_text())["step"] >= 3, 90,
              "the toy run to reach step 3")
    job._interrupt()  # preemption: SIGTERM then SIGUSR2, as Slurm does
    _wait_for(released_when_requeued(slurm, job.job_id), 60, "the job to be requeued", job=job)
    result = job_result(job)
    assert result["status"] == "completed"
    assert result["step"] == steps
    assert result["value"] == launch_toys.expected_value(steps)  # nothing lost, nothing run twice
    state = json.loads(state_path.read_text())
    assert state["starts"] == 2 and state["restart_count"] == "1"
    log = Path(job.paths.stdout).read_text()
    assert "checkpoint written at a step boundary; requeueing" in log


def test_failed_job_is_one_readable_line(slurm, tmp_path, capsys):
    launched = launch_task("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", "data.root=/no/such/folder",
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


def test_sweep_from_the_cli_is_one_array_and_jobs_lists_it(slurm, synth_root, tmp_path, capsys):
    import submitit

    reg = tmp_path / "jobs.jsonl"
    out = tmp_path / "sweep"
    argv = ["launch", "pretrain", "pretrain_k400_tiny", *_tiny(synth_root, out, "train.max_steps=2"),
            f"slurm.registry={reg}", "sweep=optim.lr=1e-3,2e-3", "--wait"]
    assert main(argv) == 0, capsys.readouterr().err
    records = registry.read(str(reg))
    ids = [r["job_id"] for r in records]
    assert len(ids) == 2 and ids[0].split("_")[0] == ids[1].split("_")[0] and ids[0] != ids[1]  # ONE array
    results = [submitit.SlurmJob(folder=r["folder"], job_id=r["job_id"]).result() for r in records]
    assert [r["lr"] for r in results] == [1e-3, 2e-3]
    assert [Path(r["output_dir"]).name for r in results] == ["optim.lr=1e-3", "optim.lr=2e-3"]
    assert all(r["status"] == "completed" and r["step"] == 2 for r in results)

    def listed():
        assert main(["jobs", "--registry", str(reg)]) == 0
        text = capsys.readouterr().out
        return text if all(re.search(rf"^{re.escape(i)}\s.*COMPLETED", text, re.M) for i in ids) else None

    text = _wait_for(listed, 60, "sacct to report both array tasks COMPLETED", interval=2)
    assert "sweep optim.lr=1e-3" in text and str(out / "optim.lr=2e-3" / "checkpoint-00000002.pt") in text


def test_cancelled_job_reports_state(slurm, tmp_path, capsys):
    launched = launch_task("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=200", *CPU_JOB,
                                         f"slurm.registry={tmp_path / 'jobs.jsonl'}"],
                      entries={"train": launch_toys.toy_run_task})
    job = launched.jobs[0]
    _wait_for(lambda: (tmp_path / "run" / "toy_state.json").exists(), 90, "the job to start")
    subprocess.run(["scancel", str(job.job_id)], check=True)
    assert wait_and_report(launched) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CANCELLED" in err and f"[log: {job.paths.stderr}]" in err
    assert registry.read(str(tmp_path / "jobs.jsonl"))[0]["job_id"] == str(job.job_id)


# ---------------------------------------------------------------------------------------------------------------
# End to end: the real engine and eval on the synthetic data, through Slurm.

def _tiny(synth_root, output_dir, *extra: str) -> list[str]:
    """Overrides shrinking pretrain_k400_tiny / finetune_k400_tiny to a few-second run on the session synth set."""
    k400 = synth_root / "k400"
    return [f"data.root={k400}", f"data.train_annotation={k400}/train.csv", f"data.val_annotation={k400}/val.csv",
            "data.input_size=32", "data.short_side_size=32", "data.num_frames=4", "data.batch_size=4",
            "data.num_workers=1",  # a worker process: Slurm signals it too, and it must survive preemption
            "train.progress=false", "train.log_every_steps=1",
            f"train.output_dir={output_dir}", *CPU_JOB, *extra]


def _steps_logged(output_dir: Path) -> int:
    path = output_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(ln).get("step", 0) for ln in path.read_text().splitlines() if ln.strip()]
    return max(steps, default=0)


@pytest.fixture(scope="module")
def eval_array_jobs(slurm, synth_root, tmp_path_factory):
    """One eval of a random finetune model, submitted as a single job and as an array of 3 shards + merge:
    (folder, single launch, array launch). CPU-bound for a while; submitted as the module starts (below)."""
    import torch

    from videoconvmae.config import load_config, to_dict
    from videoconvmae.models import build_model

    tmp_path = tmp_path_factory.mktemp("eval_array")
    base = _tiny(synth_root, tmp_path / "run", "eval.num_temporal_views=2", "eval.num_spatial_views=2",
                 f"slurm.registry={tmp_path / 'jobs.jsonl'}")
    cfg = load_config("finetune_k400_tiny", [*base, "model.pretrained=''", "model.drop_path_rate=0"])
    torch.manual_seed(0)
    model = build_model(cfg.model, "finetune", 5)
    torch.save({"model": model.state_dict(), "config": to_dict(cfg)}, tmp_path / "weights.pt")
    eval_args = [*base, f"eval.checkpoint={tmp_path / 'weights.pt'}", "model.pretrained=''"]

    single = launch_task("eval", "finetune_k400_tiny", [*eval_args, f"eval.out_dir={tmp_path / 'single'}"])
    arrayed = launch_task("eval", "finetune_k400_tiny", [*eval_args, f"eval.out_dir={tmp_path / 'array'}",
                                                     "slurm.array=3"])
    return tmp_path, single, arrayed


@pytest.fixture(scope="module", autouse=True)
def _eval_array_first(request):
    """Submit the eval array when the module starts (when its test is selected): its test collects the results."""
    if any(item.originalname == "test_eval_array_of_three_plus_merge_equals_the_single_eval"
           for item in request.session.items):
        request.getfixturevalue("eval_array_jobs")


def test_tiny_pretrain_launched_from_the_cli_completes_and_its_checkpoint_loads(slurm, synth_root, tmp_path,
                                                                                 capsys):
    import torch

    from videoconvmae.engine.checkpoint import list_checkpoints, load_checkpoint
    from videoconvmae.models import build_model

    out = tmp_path / "pretrain"
    reg = tmp_path / "jobs.jsonl"
    argv = ["launch", "pretrain", "pretrain_k400_tiny", *_tiny(synth_root, out, "train.max_steps=4"),
            f"slurm.registry={reg}", "--wait"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert re.search(r"^job \d+ done: status=completed step=4 ", printed, re.M), printed
    ckpt = load_checkpoint(list_checkpoints(out)[0])
    assert ckpt["step"] == 4 and ckpt["config"]["train"]["output_dir"] == str(out)
    weights = torch.load(out / "weights.pt", weights_only=True)
    from videoconvmae.config import from_dict

    model = build_model(from_dict(weights["config"]).model, "pretrain")
    model.load_state_dict(weights["model"])  # strict: every key of the trained model is there
    rec = registry.read(str(reg))[0]
    assert rec["task"] == "pretrain" and rec["preset"] == "pretrain_k400_tiny" and Path(rec["stderr"]).is_file()


def test_preempted_pretrain_ends_with_the_weights_of_an_uninterrupted_run(slurm, synth_root, tmp_path):
    import torch

    steps = 24  # 3 steps per epoch on the synthetic set: the stop lands mid-epoch more often than not
    common = ["train.max_steps=24", "optim.epochs=10", "train.ckpt_every_steps=1000",
              f"slurm.registry={tmp_path / 'jobs.jsonl'}"]
    ref = launch_task("pretrain", "pretrain_k400_tiny", _tiny(synth_root, tmp_path / "ref", *common)).jobs[0]
    cut_dir = tmp_path / "cut"
    cut = launch_task("pretrain", "pretrain_k400_tiny", _tiny(synth_root, cut_dir, *common)).jobs[0]
    _wait_for(lambda: _steps_logged(cut_dir) >= 4, 180, "the run to reach step 4")
    cut._interrupt()  # SIGTERM + SIGUSR2, as a preemption
    _wait_for(released_when_requeued(slurm, cut.job_id), 90, "the preempted job to be requeued", job=cut)
    r_ref, r_cut = job_result(ref), job_result(cut)
    assert r_ref["status"] == r_cut["status"] == "completed" and r_ref["step"] == r_cut["step"] == steps

    starts = [json.loads(ln) for ln in (cut_dir / "metrics.jsonl").read_text().splitlines()
              if '"event": "start"' in ln]
    assert len(starts) == 2, "the job was not requeued and resumed"
    stopped_at = starts[1]["step"]
    assert 4 <= stopped_at < steps and starts[1]["resumed_from"].endswith(f"checkpoint-{stopped_at:08d}.pt")
    a = torch.load(tmp_path / "ref" / "weights.pt", weights_only=True)["model"]
    b = torch.load(cut_dir / "weights.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs from the uninterrupted one in {different[:5]}"


def test_time_limit_requeues_until_max_num_timeout_then_fails_in_one_line(slurm, tmp_path, capsys):
    # With a 1-minute limit every signal counts as a time-out (submitit: ran >= min(0.8 x limit, limit - 10 min)).
    launched = launch_task("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=200", *CPU_JOB,
                                         "slurm.timeout_min=1", "slurm.signal_delay_s=1", "slurm.max_num_timeout=1",
                                         f"slurm.registry={tmp_path / 'jobs.jsonl'}"],
                      entries={"train": launch_toys.toy_run_task})
    job = launched.jobs[0]
    state_path = tmp_path / "run" / "toy_state.json"

    def state():
        return json.loads(state_path.read_text()) if state_path.exists() else {"step": 0, "starts": 0}

    _wait_for(lambda: state()["step"] >= 2, 60, "the first run to reach step 2", job=job)
    job._interrupt(timeout=True)  # SIGUSR2 only, as at the time limit: 1 time-out allowed -> requeued
    _wait_for(released_when_requeued(slurm, job.job_id), 60, "the requeue after the time-out", job=job)
    _wait_for(lambda: state()["starts"] == 2 and state()["step"] >= 4, 60, "the requeued run to resume", job=job)
    resumed_at = state()["step"]
    job._interrupt(timeout=True)  # second time-out: countdown spent -> the job fails, checkpoint kept
    assert wait_and_report(launched) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "failed: UncompletedJobError: Job not requeued because: timed-out too many times." in err
    assert f"[log: {job.paths.stderr}]" in err
    final = state()
    assert final["starts"] == 2 and resumed_at <= final["step"] < 200  # stopped at a step boundary, state saved
    assert final["value"] == launch_toys.expected_value(final["step"])


def test_refused_submission_is_one_line(slurm, tmp_path, capsys):
    reg = tmp_path / "jobs.jsonl"
    assert main(["launch", "pretrain", "pretrain_k400_tiny", f"train.output_dir={tmp_path / 'run'}", *CPU_JOB,
                 "slurm.partition=no_such_partition", f"slurm.registry={reg}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith("error: sbatch refused the pretrain job: invalid partition")
    assert not reg.exists()  # nothing was submitted, nothing registered


def test_preempted_eval_shard_is_requeued_and_starts_over(slurm, tmp_path):
    launched = launch_task("eval", None, [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=25", *CPU_JOB,
                                     f"slurm.registry={tmp_path / 'jobs.jsonl'}"],
                      entries={"eval": launch_toys.toy_eval})
    job = launched.jobs[0]
    starts = tmp_path / "run" / "eval" / "starts"
    _wait_for(starts.exists, 60, "the eval job to start", job=job)
    job._interrupt()
    _wait_for(released_when_requeued(slurm, job.job_id), 60, "the eval job to be requeued", job=job)
    result = job_result(job)
    assert result["starts"] == 2 and "nothing to save; requeueing now" in Path(job.paths.stdout).read_text()


def test_eval_array_of_three_plus_merge_equals_the_single_eval(eval_array_jobs):
    import numpy as np

    from videoconvmae.eval.metrics import load_predictions

    tmp_path, single, arrayed = eval_array_jobs
    shard_ids = [str(j.job_id) for j in arrayed.jobs]
    array_id = shard_ids[0].split("_")[0]
    assert shard_ids == [f"{array_id}_{i}" for i in range(3)]
    submission = Path(arrayed.merge.paths.submission_file).read_text()
    assert f"--dependency=afterok:{array_id}" in submission

    full, merged = single.jobs[0].result(), arrayed.merge.result()
    for key in ("top1", "top5", "mean_class_acc", "num_evaluated", "num_unreadable"):
        assert merged[key] == full[key], key
    assert merged["num_evaluated"] == 10
    assert sorted(p.name for p in (tmp_path / "array").iterdir() if p.name.startswith("shard-")) == [
        "shard-0-of-3", "shard-1-of-3", "shard-2-of-3"]
    a_ids, a_labels, a_scores = load_predictions(tmp_path / "single" / "predictions.npz")
    b_ids, b_labels, b_scores = load_predictions(tmp_path / "array" / "predictions.npz")
    order = [b_ids.index(v) for v in a_ids]
    assert np.array_equal(a_labels, b_labels[order])
    np.testing.assert_allclose(a_scores, b_scores[order], rtol=0, atol=1e-6)
