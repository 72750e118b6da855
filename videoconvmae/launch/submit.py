"""``launch(cfg, sweep)``: submit the run a Config describes (``cfg.task``); ``videoconvmae launch`` turns its
words into that Config (launch/cli.py) and calls this.

* a training task -> one RunJob (checkpointable, see job.py);
* ``sweep=[("optim.base_lr", ["1e-4", "2e-4"])]`` -> ONE array over the grid of values, each point in its
  own ``<train.output_dir>/<key>=<value>`` folder;
* ``eval`` with ``slurm.array=N`` -> an array of N EvalJobs (``eval.shard=i/N``) and a MergeJob that starts
  after all of them succeeded (``afterok`` on the array);
* every submitted job is appended to the registry read by ``videoconvmae jobs``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import submitit.core.utils

from videoconvmae.config import Config, apply_overrides
from videoconvmae.errors import ConfigError, UserError
from videoconvmae.launch import registry
from videoconvmae.launch.executor import check_slurm_config, make_executor
from videoconvmae.launch.job import EVAL_ENTRY, MERGE_ENTRY, TRAIN_ENTRY, EvalJob, MergeJob, RunJob

SweepSpec = Sequence[tuple[str, Sequence[str]]]


@dataclass
class Launched:
    """What was submitted: the run / shard / sweep jobs, the merge job of an eval array, their registry lines."""

    task: str
    jobs: list[submitit.Job]
    configs: list[Config]
    merge: submitit.Job | None = None
    records: list[dict] = field(default_factory=list)

    @property
    def final_jobs(self) -> list[submitit.Job]:
        """The jobs whose results are the launch's results (the merge job for an eval array)."""
        return [self.merge] if self.merge is not None else self.jobs


def parse_sweep(texts: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["optim.base_lr=1e-4,2e-4"]`` -> [("optim.base_lr", ["1e-4", "2e-4"])]."""
    out = []
    for text in texts:
        key, sep, values = text.partition("=")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not items:
            raise ConfigError(f"sweep={text!r}: expected sweep=key.sub=v1,v2,...")
        out.append((key.strip(), items))
    return out


def _point_name(point: Sequence[tuple[str, str]]) -> str:
    return ",".join(f"{k}={re.sub(r'[^A-Za-z0-9_.+-]', '_', v)}" for k, v in point)


def launch(cfg: Config, sweep: SweepSpec = (), *, entries: dict[str, str | Callable] | None = None,
           preset: str = "", overrides: Sequence[str] = ()) -> Launched:
    """Submit the run ``cfg`` describes (``cfg.task``; ``cfg.slurm`` its resources) on ``slurm.cluster``.

    ``entries`` replaces the functions jobs run ({"train", "eval", "merge"}: "module:function" or a callable with
    the same contract) — for tests of the plumbing; the CLI never passes it. ``preset`` / ``overrides`` are only
    recorded in the registry (what the user typed).
    """
    entries = {"train": TRAIN_ENTRY, "eval": EVAL_ENTRY, "merge": MERGE_ENTRY, **(entries or {})}
    check_slurm_config(cfg.slurm)
    output_dir = Path(cfg.train.output_dir).resolve()
    # the job and the registry agree whatever the job's cwd
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(output_dir)))
    common = {"task": cfg.task, "preset": preset, "cluster": cfg.slurm.cluster}
    overrides = list(overrides)

    captured = io.StringIO()  # submitit echoes a refused sbatch's stderr; the error below says it in one line
    try:
        with contextlib.redirect_stderr(captured):
            launched = _submit(cfg, overrides, sweep, entries, common, output_dir)
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as e:
        # sbatch refused the job (unknown partition / account, too many GPUs, ...): its own last message
        lines = [ln.strip().removeprefix("sbatch: error: ") for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"sbatch refused the {cfg.task} job: {'; '.join(lines) or type(e).__name__}") from None
    sys.stderr.write(captured.getvalue())  # warnings of a successful submission still reach the user
    if cfg.slurm.cluster != "debug":  # debug jobs live in this process only: nothing to list later
        registry.append(launched.records, cfg.slurm.registry)
    return launched


def _submit(cfg: Config, overrides: list[str], sweep: SweepSpec, entries: dict, common: dict,
            output_dir: Path) -> Launched:
    if cfg.task == "eval":
        if sweep:
            raise ConfigError("sweep=: sweeps are for training tasks (pretrain | finetune | linprobe), not eval")
        return _launch_eval(cfg, overrides, entries, common)
    if cfg.slurm.array:
        raise ConfigError(f"slurm.array={cfg.slurm.array}: arrays shard eval only; sweep a {cfg.task} run with "
                          "sweep=key.sub=v1,v2")
    return _launch_train(cfg, overrides, sweep, entries, common, output_dir)


def _launch_train(cfg: Config, overrides: list[str], sweep: SweepSpec, entries: dict, common: dict,
                  output_dir: Path) -> Launched:
    if not sweep:
        job = make_executor(cfg.slurm, output_dir).submit(RunJob(cfg, entries["train"]))
        rec = registry.record(job, kind="train", overrides=overrides, output_dir=str(output_dir), **common)
        return Launched(cfg.task, [job], [cfg], records=[rec])
    keys = [k for k, _ in sweep]
    points = [list(zip(keys, values)) for values in itertools.product(*[v for _, v in sweep])]
    configs, point_overrides = [], []
    for point in points:
        extra = [f"{k}={v}" for k, v in point] + [f"train.output_dir={output_dir / _point_name(point)}"]
        point_overrides.append([*overrides, *extra])
        configs.append(apply_overrides(cfg, extra))
    executor = make_executor(configs[0].slurm, output_dir)
    jobs = executor.submit_array([RunJob(c, entries["train"]) for c in configs])  # ONE Slurm array
    records = [registry.record(job, kind="sweep", overrides=ov, output_dir=c.train.output_dir,
                               name=_point_name(pt), **common)
               for job, c, ov, pt in zip(jobs, configs, point_overrides, points)]
    return Launched(cfg.task, jobs, configs, records=records)


def _launch_eval(cfg: Config, overrides: list[str], entries: dict, common: dict) -> Launched:
    output_dir = Path(cfg.train.output_dir)
    n = cfg.slurm.array
    if n <= 1:
        job = make_executor(cfg.slurm, output_dir).submit(EvalJob(cfg, entries["eval"]))
        rec = registry.record(job, kind="eval", overrides=overrides, output_dir=str(output_dir), **common)
        return Launched("eval", [job], [cfg], records=[rec])
    if cfg.eval.shard not in ("", "0/1"):
        raise ConfigError(f"eval.shard={cfg.eval.shard!r} with slurm.array={n}: the array sets the shards itself")
    shard_overrides = [[*overrides, f"eval.shard={i}/{n}"] for i in range(n)]
    configs = [apply_overrides(cfg, [f"eval.shard={i}/{n}"]) for i in range(n)]
    shards = make_executor(cfg.slurm, output_dir).submit_array([EvalJob(c, entries["eval"]) for c in configs])
    merge_params: dict[str, Any] = {"name": f"{cfg.slurm.job_name}-merge", "nodes": 1, "tasks_per_node": 1}
    if cfg.slurm.cluster == "slurm":
        merge_params["slurm_dependency"] = f"afterok:{str(shards[0].job_id).split('_')[0]}"
        merge_params["slurm_additional_parameters"] = {"kill-on-invalid-dep": "yes"}
    merge_executor = make_executor(cfg.slurm, output_dir, **merge_params)
    if cfg.slurm.gpus_per_node:
        merge_executor.update_parameters(gpus_per_node=0)
    merge = merge_executor.submit(MergeJob(shards, entries["merge"]))
    records = [registry.record(job, kind="eval-shard", overrides=ov, output_dir=str(output_dir),
                               name=f"shard {i}/{n}", **common)
               for i, (job, ov) in enumerate(zip(shards, shard_overrides))]
    records.append(registry.record(merge, kind="merge", overrides=overrides, output_dir=str(output_dir),
                                   name=f"merge of {shards[0].job_id.split('_')[0]}", **common))
    return Launched("eval", shards, configs, merge=merge, records=records)

