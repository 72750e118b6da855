"""``videoconvmae launch`` and ``videoconvmae jobs``.

    videoconvmae launch <pretrain|finetune|linprobe|eval> PRESET [key.sub=value ...] [slurm.<key>=value ...]
                        [sweep=key.sub=v1,v2 ...] [--wait] [--sbatch]
    videoconvmae jobs [-n N | --all] [--registry PATH]

``launch`` submits the same run ``videoconvmae <task> PRESET ...`` would do, as a submitit job on
``slurm.cluster`` (slurm | local | debug). ``eval ... slurm.array=N`` shards the evaluation over N array tasks and
merges them in a dependent job; ``sweep=`` submits one array over the values (several sweep= make a grid).
``--wait`` waits for the result (a failure prints as one line with the log path); ``--sbatch`` prints the
equivalent plain sbatch script instead of submitting. ``jobs`` lists the submitted runs with their Slurm state,
log and newest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import submitit

from videoconvmae.config import Config, load_config, preset_layers
from videoconvmae.launch import registry
from videoconvmae.launch.job import job_result
from videoconvmae.launch.submit import Launched, SweepSpec, launch, parse_sweep
from videoconvmae.task import Task


def load_task_config(task: str, preset: str | None, overrides: Sequence[str]) -> Config:
    """The config a ``videoconvmae <task> PRESET ...`` run would use (eval also takes a CHECKPOINT first)."""
    if task == "eval" and preset:
        from videoconvmae.eval.cli import _is_checkpoint, eval_config

        cfg = eval_config([preset, *overrides])
        yaml_presets = [w for w in [preset, *overrides][:2] if "=" not in w and not _is_checkpoint(w)]
    else:
        cfg = load_config(preset, list(overrides), task=task)
        yaml_presets = [preset] if preset else []
    if cfg.train.device == "cpu" and not _sets_gpus(yaml_presets, overrides):
        cfg.slurm.gpus_per_node = 0  # a CPU run holds no GPUs unless a preset or override asks for them
    return cfg


def _sets_gpus(presets: Sequence[str], overrides: Sequence[str]) -> bool:
    """Whether ``slurm.gpus_per_node`` is given by an override or a preset (not just the schema default)."""
    if any(o.split("=", 1)[0].strip() == "slurm.gpus_per_node" for o in overrides):
        return True
    return any("gpus_per_node" in (data.get("slurm") or {}) for p in presets for _, data in preset_layers(p))


def launch_task(task: str, preset: str | None, overrides: Sequence[str] = (), sweep: SweepSpec = (), *,
                entries: dict[str, str | Callable] | None = None) -> Launched:
    """``videoconvmae launch TASK PRESET [overrides]`` from Python: the words' Config, submitted by ``launch``."""
    return launch(load_task_config(task, preset, overrides), sweep, entries=entries, preset=preset or "",
                  overrides=overrides)


def _split_words(words: list[str]) -> tuple[list[str], list[str]]:
    """Config overrides, and the ``sweep=`` words without their prefix."""
    sweeps = [w.removeprefix("sweep=") for w in words if w.startswith("sweep=")]
    return [w for w in words if not w.startswith("sweep=")], sweeps


def _describe(launched: Launched) -> list[str]:
    out = []
    rec_by_id = {r["job_id"]: r for r in launched.records}
    for job in [*launched.jobs, *([launched.merge] if launched.merge is not None else [])]:
        rec = rec_by_id.get(str(job.job_id), {})
        what = rec.get("kind", launched.task) + (f" {rec['name']}" if rec.get("name") else "")
        out.append(f"submitted {launched.task} job {job.job_id} ({what}) -> {rec.get('output_dir', '')}")
        out.append(f"  log: {job.paths.stdout} / {job.paths.stderr}")
    return out


def _slurm_state(job: submitit.Job) -> str:
    if not isinstance(job, submitit.SlurmJob):
        return ""
    return registry.states([{"cluster": "slurm", "folder": str(job.paths.folder), "job_id": str(job.job_id)}])[0]


def wait_and_report(launched: Launched) -> int:
    """Wait for the launch's final jobs; print a summary per job or ONE failure line each. 0 = all succeeded."""
    failed = 0
    for job in launched.final_jobs:
        try:
            result = job_result(job)
        except Exception as e:  # noqa: BLE001 - submitit's FailedJobError / UncompletedJobError, or debug's own
            failed += 1
            if isinstance(job, submitit.DebugJob):  # ran in this process: the exception itself is the message
                line = f"job {job.job_id} ({launched.task}) failed: {type(e).__name__}: {str(e).strip()}"
                print(f"error: {' '.join(line.split())}", file=sys.stderr)
            else:
                print(f"error: {registry.failure_line(job, launched.task, _slurm_state(job))}", file=sys.stderr)
            continue
        brief = {k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str))}
        print(f"job {job.job_id} done: " + " ".join(f"{k}={v}" for k, v in brief.items()))
    return 1 if failed else 0


def _launch(args: argparse.Namespace) -> int:
    overrides, sweeps = _split_words(list(args.overrides))
    preset = args.preset
    if args.sbatch:
        from videoconvmae.launch.sbatch import render_sbatch

        if sweeps:
            from videoconvmae.errors import UserError

            raise UserError("--sbatch renders one run; a sweep needs `videoconvmae launch` (submitit arrays)")
        print(render_sbatch(args.task, preset, overrides), end="")
        return 0
    launched = launch_task(args.task, preset, overrides, parse_sweep(sweeps))
    print("\n".join(_describe(launched)))
    if launched.records:
        print(f"registered in {registry.registry_path(launched.configs[0].slurm.registry)} "
              "(list with `videoconvmae jobs`)")
    return wait_and_report(launched) if args.wait or launched.configs[0].slurm.cluster == "debug" else 0


def _latest_checkpoint(output_dir: str) -> str:
    from videoconvmae.engine.checkpoint import list_checkpoints

    found = list_checkpoints(output_dir)
    return str(found[0]) if found else output_dir


def _jobs(args: argparse.Namespace) -> int:
    records = registry.read(args.registry or "")
    if not args.all:
        records = records[-args.n:]
    if not records:
        print(f"no jobs in {registry.registry_path(args.registry or '')}")
        return 0
    states = registry.states(records)
    rows = [("JOB", "KIND", "TASK", "STATE", "SUBMITTED", "OUTPUT / NEWEST CHECKPOINT", "LOG")]
    notes = {}
    for rec, state in zip(records, states):
        where = rec["output_dir"]
        if rec["kind"] in ("train", "sweep"):
            where = _latest_checkpoint(rec["output_dir"]) if Path(rec["output_dir"]).is_dir() else where
        rows.append((rec["job_id"], rec["kind"] + (f" {rec['name']}" if rec.get("name") else ""), rec["task"],
                     state, rec.get("submitted", ""), where, rec["stderr"]))
        if state in registry.FAILED_STATES:
            notes[rec["job_id"]] = registry.error_summary(registry.job_from_record(rec), state)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        if row[0] in notes:
            print(f"    error: {notes[row[0]]}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("launch", help="submit a run to Slurm with submitit (or run it locally)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=[t.value for t in Task], help="what to run")
    p.add_argument("preset", help="config preset name or YAML path (eval: also a CHECKPOINT)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides, slurm.<key>=value resources, sweep=key.sub=v1,v2")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and report their results")
    p.add_argument("--sbatch", action="store_true", help="print the equivalent sbatch script, submit nothing")
    p.set_defaults(func=_launch)

    j = subparsers.add_parser("jobs", help="list the runs submitted with `videoconvmae launch`")
    j.add_argument("-n", type=int, default=20, help="show the last N jobs (default 20)")
    j.add_argument("--all", action="store_true", help="show every registered job")
    j.add_argument("--registry", default="", help="registry file (default $VIDEOCONVMAE_JOBS or "
                                                  "~/.videoconvmae/jobs.jsonl)")
    j.set_defaults(func=_jobs)
