"""The launch layer without Slurm: typed resources -> executor parameters, bad input, debug / local clusters."""

from __future__ import annotations

import json
import re

import cloudpickle
import launch_toys
import pytest

from videoconvmae.config import load_config
from videoconvmae.engine.distributed import read_env
from videoconvmae.errors import ConfigError
from videoconvmae.launch.cli import launch_task, wait_and_report
from videoconvmae.launch.executor import check_slurm_config, executor_parameters, job_folder, make_executor
from videoconvmae.launch.srun import expand_nodelist, torch_env_from_slurm
from videoconvmae.launch.submit import parse_sweep

cloudpickle.register_pickle_by_value(launch_toys)


def _slurm(*overrides: str):
    return load_config(None, [*overrides, "slurm.cluster=debug"]).slurm


def test_one_task_per_gpu_and_typed_resources():
    s = _slurm("slurm.nodes=8", "slurm.gpus_per_node=8", "slurm.cpus_per_task=10", "slurm.mem_gb=480",
               "slurm.partition=learn", "slurm.account=vision", "slurm.qos=high", "slurm.constraint=volta32gb",
               "slurm.comment=k400", "slurm.timeout_min=600", "slurm.signal_delay_s=300",
               "slurm.extra=[exclude=node1,mail-type=END]")
    p = executor_parameters(s)
    assert (p["nodes"], p["tasks_per_node"], p["gpus_per_node"], p["cpus_per_task"]) == (8, 8, 8, 10)
    assert (p["mem_gb"], p["timeout_min"], p["slurm_signal_delay_s"]) == (480, 600, 300)
    assert (p["slurm_partition"], p["slurm_account"], p["slurm_qos"]) == ("learn", "vision", "high")
    assert p["slurm_constraint"] == "volta32gb" and p["slurm_comment"] == "k400"
    assert p["slurm_additional_parameters"] == {"requeue": True, "exclude": "node1", "mail-type": "END"}


def test_cpu_job_has_one_task_and_no_gpu_or_memory_flags():
    p = executor_parameters(_slurm("slurm.gpus_per_node=0"))
    assert p["tasks_per_node"] == 1
    assert "gpus_per_node" not in p and "mem_gb" not in p and "slurm_partition" not in p
    assert executor_parameters(_slurm("slurm.gpus_per_node=0", "slurm.tasks_per_node=2"))["tasks_per_node"] == 2
    assert executor_parameters(_slurm("slurm.tasks_per_node=8"))["tasks_per_node"] == 8


def test_job_folder_lives_under_the_run(tmp_path):
    s = _slurm()
    assert job_folder(s, tmp_path / "run") == (tmp_path / "run" / "slurm").resolve()
    s.folder = str(tmp_path / "elsewhere")
    assert job_folder(s, tmp_path / "run") == (tmp_path / "elsewhere").resolve()


@pytest.mark.parametrize("override, message", [
    ("slurm.cluster=kubernetes", "slurm.cluster: expected one of slurm|local|debug"),
    ("slurm.nodes=0", "slurm.nodes: expected a positive integer"),
    ("slurm.gpus_per_node=-1", "slurm.gpus_per_node: expected an integer >= 0"),
    ("slurm.extra=[exclude]", "slurm.extra: expected sbatch options as key=value"),
    ("slurm.tasks_per_node=4", "slurm.tasks_per_node: one task per GPU, expected 0 or 8 (slurm.gpus_per_node), got 4"),
    ("slurm.tasks_per_node=-1", "slurm.tasks_per_node: expected an integer >= 0"),
])
def test_bad_resources_are_one_line(override, message):
    s = load_config(None, ["slurm.cluster=debug", override]).slurm
    with pytest.raises(ConfigError) as e:
        check_slurm_config(s)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_local_cluster_is_one_node():
    with pytest.raises(ConfigError, match="slurm.nodes: slurm.cluster=local runs on this machine only"):
        check_slurm_config(load_config(None, ["slurm.cluster=local", "slurm.nodes=2"]).slurm)


def test_sweep_parsing():
    assert parse_sweep(["optim.base_lr=1e-4,2e-4", "model.mask_ratio=0.75"]) == [
        ("optim.base_lr", ["1e-4", "2e-4"]), ("model.mask_ratio", ["0.75"])]
    with pytest.raises(ConfigError, match="expected sweep=key.sub=v1,v2"):
        parse_sweep(["optim.base_lr"])


def test_executor_for_debug_writes_logs_under_the_run(tmp_path):
    ex = make_executor(_slurm("slurm.gpus_per_node=0"), tmp_path / "run")
    job = ex.submit(int, "7")
    assert job.result() == 7
    assert str(job.paths.folder).startswith(str(tmp_path / "run" / "slurm"))


def test_debug_cluster_runs_the_same_job_in_process(tmp_path, capsys):
    launched = launch_task("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=3",
                                         "slurm.cluster=debug", "slurm.gpus_per_node=0"],
                      entries={"train": launch_toys.toy_run_task})
    assert wait_and_report(launched) == 0
    assert f"job {launched.jobs[0].job_id} done: status=completed step=3" in capsys.readouterr().out
    state = json.loads((tmp_path / "run" / "toy_state.json").read_text())
    assert state["value"] == launch_toys.expected_value(3)


def test_debug_failure_is_one_line(tmp_path, capsys):
    launched = launch_task("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", "slurm.cluster=debug",
                                         "data.root=/nope"], entries={"train": launch_toys.toy_failing_task})
    assert wait_and_report(launched) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("failed: FileNotFoundError: data.root: folder '/nope' does not exist")
    assert len(err.splitlines()) == 1


def test_local_cluster_runs_the_pickled_job(tmp_path):
    reg = tmp_path / "jobs.jsonl"
    launched = launch_task("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2",
                                         "slurm.cluster=local", "slurm.gpus_per_node=0", f"slurm.registry={reg}"],
                      entries={"train": launch_toys.toy_run_task})
    result = launched.jobs[0].result()
    assert result["status"] == "completed" and result["value"] == launch_toys.expected_value(2)
    rec = json.loads(reg.read_text().splitlines()[0])
    assert rec["cluster"] == "local" and rec["output_dir"] == str((tmp_path / "run").resolve())


def test_sweep_not_for_eval(tmp_path):
    with pytest.raises(ConfigError, match="sweeps are for training tasks"):
        launch_task("eval", None, [f"train.output_dir={tmp_path}", "slurm.cluster=debug"],
               sweep=[("optim.base_lr", ["1e-4"])])


def test_array_is_for_eval_only(tmp_path):
    with pytest.raises(ConfigError, match="slurm.array=3: arrays shard eval only"):
        launch_task("pretrain", None, [f"train.output_dir={tmp_path}", "slurm.cluster=debug", "slurm.array=3"])


def test_launch_eval_from_a_checkpoint_takes_its_saved_config(synth_root, tmp_path, capsys):
    """`videoconvmae launch eval CHECKPOINT ...` = `videoconvmae eval CHECKPOINT ...`, here on the debug cluster."""
    import torch

    from videoconvmae.cli import main
    from videoconvmae.config import to_dict
    from videoconvmae.models import build_model

    k400 = synth_root / "k400"
    cfg = load_config("finetune_k400_tiny", [f"data.root={k400}", f"data.train_annotation={k400}/train.csv",
                                             f"data.val_annotation={k400}/val.csv", "data.input_size=32",
                                             "data.short_side_size=32", "data.num_frames=4", "data.num_workers=0",
                                             "model.pretrained=''", f"train.output_dir={tmp_path / 'ft'}"])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg.model, "finetune", 5).state_dict(), "config": to_dict(cfg)},
               tmp_path / "weights.pt")
    assert main(["launch", "eval", str(tmp_path / "weights.pt"), "eval.num_temporal_views=1",
                 "eval.num_spatial_views=1", "train.progress=false", "slurm.cluster=debug"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"done: .*num_evaluated=10 ", out), out
    metrics = json.loads((tmp_path / "ft" / "eval" / "metrics.json").read_text())
    assert metrics["num_evaluated"] == 10 and metrics["run"]["checkpoint"] == str(tmp_path / "weights.pt")


def test_local_multi_task_job_is_a_ddp_run(synth_root, tmp_path, capsys):
    """slurm.gpus_per_node=2 -> 2 tasks; on this CPU machine they join one gloo process group (world_size 2)."""
    from videoconvmae.cli import main

    k400, out = synth_root / "k400", tmp_path / "run"
    assert main(["launch", "pretrain", "pretrain_k400_tiny", f"data.root={k400}",
                 f"data.train_annotation={k400}/train.csv", f"data.val_annotation={k400}/val.csv",
                 "data.input_size=32", "data.num_frames=4", "data.batch_size=2", "data.num_workers=0",
                 "train.max_steps=2", "train.progress=false", f"train.output_dir={out}", "slurm.cluster=local",
                 "slurm.gpus_per_node=2", f"slurm.registry={tmp_path / 'jobs.jsonl'}", "--wait"]) == 0
    assert re.search(r"done: status=completed step=2 ", capsys.readouterr().out)
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["world_size"] == 2


def test_failure_on_one_rank_names_that_rank_s_log(tmp_path, capsys):
    launched = launch_task("pretrain", None, [f"train.output_dir={tmp_path / 'run'}", "slurm.cluster=local",
                                         "slurm.gpus_per_node=2", f"slurm.registry={tmp_path / 'jobs.jsonl'}"],
                      entries={"train": launch_toys.toy_failing_on_rank_1})
    assert wait_and_report(launched) == 1
    err = capsys.readouterr().err.strip()
    job = launched.jobs[0]
    assert len(err.splitlines()) == 1
    assert "failed: ValueError: rank 1 could not read its shard" in err
    assert err.endswith(f"[log: {job.task(1).paths.stderr}]")


def test_slurm_cluster_without_sbatch_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ConfigError, match=r"slurm.cluster=slurm but `sbatch` is not on PATH"):
        launch_task("pretrain", None, [f"train.output_dir={tmp_path}"])


def test_nodelist_expansion():
    assert expand_nodelist("node[01-03,07]") == ["node01", "node02", "node03", "node07"]
    assert expand_nodelist("gpu5,a[9-10]") == ["gpu5", "a9", "a10"]
    assert expand_nodelist("r1n[2-3]-ib") == ["r1n2-ib", "r1n3-ib"]


def test_an_srun_task_gets_torch_variables_and_torchrun_wins():
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[12-13]",
             "SLURM_JOB_ID": "4242"}
    env = dict(slurm)
    torch_env_from_slurm(env)
    assert read_env(env) == {"rank": 3, "world_size": 8, "local_rank": 1, "master_addr": "gpu12",
                             "master_port": 29500 + 4242}
    both = {**slurm, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    assert torch_env_from_slurm(both) == {}
    assert read_env(both) == {"rank": 0, "world_size": 2, "local_rank": 0, "master_addr": "h", "master_port": 1234}


def test_a_requeued_job_is_not_given_up_on_one_failed_or_empty_squeue(monkeypatch):
    """job_result's "is it still queued?" asks squeue again when squeue fails (a busy slurmctld) or answers empty
    once (between two attempts of a requeued job); three empty answers in a row mean gone."""
    import subprocess
    import types

    from videoconvmae.launch import job as job_module

    answers = []

    def fake_run(cmd, **kwargs):
        code, out = answers.pop(0)
        return subprocess.CompletedProcess(cmd, code, out, "")

    monkeypatch.setattr(job_module.subprocess, "run", fake_run)
    monkeypatch.setattr(job_module.time, "sleep", lambda s: None)
    job = types.SimpleNamespace(job_id="16")
    answers[:] = [(1, ""), (0, ""), (0, "PENDING\n")]
    assert job_module._still_queued(job) and not answers
    answers[:] = [(0, ""), (1, ""), (0, ""), (0, "")]
    assert not job_module._still_queued(job) and not answers
