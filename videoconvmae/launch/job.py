"""What submitit runs: a training run (checkpointable, requeued on preemption), an eval shard, a shard merge.

Preemption and time limits: what submitit 1.5.4 does, and what we do instead
----------------------------------------------------------------------------
Before calling the job, ``submitit/core/submission.py:process_job`` installs ``JobEnvironment._handle_signals``:
SIGTERM / SIGCONT are logged and ignored (Slurm sends SIGTERM on preemption and ``scancel``); SIGUSR2
(``#SBATCH --signal=USR2@<slurm.signal_delay_s>`` before the time limit, or a preemption) runs
``checkpoint_and_try_requeue`` INSIDE the signal handler, i.e. in the middle of a forward pass or half an
optimizer step: it calls ``checkpoint()``, dumps the returned DelayedSubmission over the pickle, runs ``scontrol
requeue`` and ``sys.exit(-1)`` (no result, so ``job.result()`` waits for the requeued run). Only time-outs (a
guess from wall time, ``has_timed_out``) count down ``max_num_timeout``; only global rank 0 requeues.

A checkpoint written from there could hold a half-applied step. So ``RunJob.__call__`` (``StopOnSignal``) blocks
SIGUSR2 and SIGTERM in the main thread and takes them in a watcher thread (``sigtimedwait``); SIGUSR2 only sets
the ``stop_event`` given to ``engine.run_task``. The engine finishes its step (all ranks agree through an
all-reduce), writes its checkpoint atomically and returns ``status="stopped"``; only then does rank 0 call
submitit's own ``checkpoint_and_try_requeue`` (same countdown, pickle and ``scontrol requeue``). The requeued job
resumes with ``train.resume=auto`` and ends with the weights an uninterrupted run would have. SIGTERM is logged
and ignored, as submitit does: a cancelled job must not requeue itself.

Why blocked rather than handled: Slurm signals EVERY process of the step, and a DataLoader worker dies of a
SIGTERM that does not come from its parent, crashing the main process before it can checkpoint; a blocked mask
is inherited by every process the run starts, so there the signal stays pending and harmless. Jobs are
submitted with ``--requeue`` (``scontrol requeue`` refuses a non-requeueable job). ``slurm.cluster=local`` uses
the same path (submitit's local controller sends SIGUSR2 before ``timeout_min``); ``debug`` runs in the caller's
process: no signals.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import submitit
from submitit.core.job_environment import SignalHandler
from submitit.core.utils import DelayedSubmission, UncompletedJobError

from videoconvmae.config import Config, from_dict

# Which function each task runs: the same entry points as `videoconvmae <task> PRESET ...`.
TRAIN_ENTRY = "videoconvmae.engine.tasks:run_task"
EVAL_ENTRY = "videoconvmae.eval.multiview:run_eval"
MERGE_ENTRY = "videoconvmae.eval.merge:merge_shards"


def resolve(entry: str | Callable) -> Callable:
    """``"package.module:function"`` -> the function (imported in the job, not at submission)."""
    if callable(entry):
        return entry
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def _submitit_environment() -> submitit.JobEnvironment | None:
    """The job environment when running as a pickled slurm / local job (not debug, not outside submitit)."""
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local") or "SUBMITIT_FOLDER" not in os.environ:
        return None
    return submitit.JobEnvironment()


TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _set_rank_environment(env: submitit.JobEnvironment | None) -> None:
    """Export this task's torch rendezvous (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) for the engine.

    The values are submitit's ``TorchDistributedEnvironment``: ranks from the job environment (SLURM_PROCID /
    SLURM_NTASKS / SLURM_LOCALID, or the local executor's), the master address is the first host of the job's
    node list (parsed by submitit, no scontrol) and the port is drawn from a RNG seeded with the job id, so all
    tasks of a job agree on it and two jobs sharing a node do not collide. sbatch and the local executor copy the
    submitting shell's environment; a RANK or MASTER_ADDR left there (a torchrun shell, a login node's exports)
    must not win, so they are dropped first (MASTER_PORT too: submitit would take it as the port). A ``local``
    job rendezvouses on 127.0.0.1: its "node list" is this machine's hostname, which need not resolve.
    CUDA_VISIBLE_DEVICES is left as the cluster set it: the engine selects ``cuda:<LOCAL_RANK>`` itself.
    """
    if env is None:
        return
    for name in TORCHRUN_VARS:
        os.environ.pop(name, None)
    rendezvous = submitit.helpers.TorchDistributedEnvironment()
    if env.cluster == "local":
        rendezvous.master_addr = "127.0.0.1"
    rendezvous.export(set_cuda_visible_devices=False)


def _task_identity(env: submitit.JobEnvironment | None) -> dict:
    """Where this task ran (returned with every rank's result; ``job.results()`` lists them all)."""
    if env is None:
        return {}
    return {"global_rank": env.global_rank, "local_rank": env.local_rank, "node": env.node,
            "num_nodes": env.num_nodes, "hostname": env.hostname}


class StopOnSignal:
    """Inside a submitit job: the preemption / time-limit signal sets ``stop_event`` instead of exiting mid-step.

    SIGUSR2 and SIGTERM are blocked and taken by a watcher thread (why: module docstring). A Python-level SIGUSR2
    handler doing the same covers a thread created before the mask that might still receive it. ``requeue()``
    then does what submitit's handler would have done, at a step boundary.
    """

    def __init__(self, requeue_at_once: bool = False) -> None:
        self.requeue_at_once = requeue_at_once  # no step boundary to wait for (eval): requeue on the signal
        self.stop_event = threading.Event()
        self.signum: int | None = None
        self._env = _submitit_environment()
        self._handler: SignalHandler | None = None
        self._previous: Any = None
        self._signals: set[int] = set()
        self._old_mask: set[int] = set()
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> StopOnSignal:
        if self._env is None or threading.current_thread() is not threading.main_thread():
            return self
        paths = self._env.paths
        delayed = DelayedSubmission.load(paths.submitted_pickle)  # for its time-out countdown and checkpoint()
        self._handler = SignalHandler(self._env, paths, delayed)
        usr = self._env._usr_sig()
        self._previous = signal.signal(usr, self._on_signal)
        self._signals = {usr, signal.SIGTERM}
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._signals)
        self._watcher = threading.Thread(target=self._watch, name="preemption-signals", daemon=True)
        self._watcher.start()  # created after the mask: it inherits it, as sigtimedwait requires
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handler is None or self._env is None:
            return
        self._done.set()
        if self._watcher is not None:
            self._watcher.join()
        while signal.sigtimedwait(self._signals, 0) is not None:  # arrived after the run ended: nothing to stop
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
        signal.signal(self._env._usr_sig(), self._previous)

    def _watch(self) -> None:
        while not self._done.is_set():
            info = signal.sigtimedwait(self._signals, 0.2)
            if info is None:
                continue
            if info.si_signo == signal.SIGTERM:  # preemption's first signal, or scancel: SIGUSR2 / SIGKILL follow
                print("[launch] SIGTERM received: ignored (waiting for SIGUSR2 to checkpoint)", flush=True)
            else:
                self._on_signal(info.si_signo, None)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signum = signum
        self.stop_event.set()
        if self.requeue_at_once and self._handler is not None:
            self._requeue_now()

    def _requeue_now(self) -> None:
        """For a job without state to save: submitit's requeue now, then end this attempt without a result."""
        assert self._handler is not None and self.signum is not None
        print(f"[launch] {signal.Signals(self.signum).name} received: nothing to save; requeueing now", flush=True)
        try:
            self._handler.checkpoint_and_try_requeue(self.signum)
        except SystemExit:
            os._exit(255)  # requeued (rank 0); this may run in the watcher thread, where sys.exit ends only it
        except Exception as e:  # noqa: BLE001 - submitit's UncompletedJobError: the time-out countdown is spent
            print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)  # the failure line reads the log
            os._exit(1)
        # other ranks: keep going until Slurm stops the requeued job

    @property
    def signalled(self) -> bool:
        return self.signum is not None and self._handler is not None

    def requeue(self) -> None:
        """Checkpoint the submission and requeue it (rank 0), then exit without a result. Never returns.

        Raises submitit's UncompletedJobError (the job fails with that one line) when the time-out countdown is
        spent.
        """
        assert self._handler is not None and self.signum is not None
        name = signal.Signals(self.signum).name
        print(f"[launch] {name} received: checkpoint written at a step boundary; requeueing", flush=True)
        self._handler.checkpoint_and_try_requeue(self.signum)  # rank 0: requeues and sys.exit(-1)
        sys.exit(-1)  # other ranks: the requeue restarts them too; no result for this attempt


class RunJob(submitit.helpers.Checkpointable):
    """One training run (pretrain / finetune / linprobe): ``run_task(cfg, stop_event)``, requeued on preemption.

    The config travels as a plain dict (rebuilt and validated with ``config.from_dict`` in the job); ``entry``
    is the function to run (the engine's ``run_task`` unless a test passes another with the same contract).
    """

    def __init__(self, cfg: Config | dict, entry: str | Callable = TRAIN_ENTRY) -> None:
        self.cfg = cfg if isinstance(cfg, dict) else _as_dict(cfg)
        self.entry = entry

    def __call__(self) -> dict:
        cfg = from_dict(self.cfg)
        with StopOnSignal() as guard:
            _set_rank_environment(guard._env)
            result = resolve(self.entry)(cfg, stop_event=guard.stop_event)
            if result.get("status") == "stopped" and guard.signalled:
                guard.requeue()
        return {**result, "job_task": _task_identity(guard._env)} if guard._env is not None else result


class EvalJob(submitit.helpers.Checkpointable):
    """One multi-view evaluation (or one shard of it, ``eval.shard=i/n``): ``run_eval(cfg)``.

    Nothing to save mid-way: on preemption / time limit it is requeued at once and the shard starts over (the
    same signal masking as RunJob keeps its DataLoader workers from dying first and crashing it).
    """

    def __init__(self, cfg: Config | dict, entry: str | Callable = EVAL_ENTRY) -> None:
        self.cfg = cfg if isinstance(cfg, dict) else _as_dict(cfg)
        self.entry = entry

    def __call__(self) -> dict:
        with StopOnSignal(requeue_at_once=True) as guard:
            _set_rank_environment(guard._env)
            return resolve(self.entry)(from_dict(self.cfg))


class MergeJob:
    """Merges the shard outputs of an eval array: ``merge_shards(<each shard's output folder>)``.

    Runs after the array (Slurm ``afterok`` dependency); reads each shard job's result through submitit, so it
    needs no knowledge of how the eval layer names its files.
    """

    def __init__(self, shard_jobs: list, entry: str | Callable = MERGE_ENTRY) -> None:
        self.shard_jobs = shard_jobs
        self.entry = entry

    def __call__(self) -> dict:
        paths = [shard_result_path(job_result(job)) for job in self.shard_jobs]
        return resolve(self.entry)(paths)


def job_result(job: submitit.Job) -> Any:
    """Rank 0's result, after every task ended (raises submitit's FailedJobError when one failed).

    Not ``job.result()``: it refuses multi-task jobs. A debug job runs here directly (submitit's DebugJob drops
    into pdb on an error).
    """
    if isinstance(job, submitit.DebugJob):
        return job.submission().result()
    while True:
        try:
            return job.results()[0]  # one task per GPU: every rank returns; rank 0's result is the run's
        except UncompletedJobError:
            # sacct can report the attempt a requeue just ended as FAILED while the next attempt waits in the
            # queue; submitit then caches "finished". Squeue knows better: forget the cache and keep waiting.
            if not (isinstance(job, submitit.SlurmJob) and _still_queued(job)):
                raise
            job.watcher.clear()
            time.sleep(5)


def _still_queued(job: submitit.Job, confirmations: int = 3, interval_s: float = 1.0) -> bool:
    """Whether squeue lists the job. "Not listed" must be answered ``confirmations`` times (failed asks in
    between do not count either way): a squeue that fails (a busy slurmctld times out) or answers between two
    attempts of a requeued job is asked again. After ``10 * confirmations`` asks without a listing or that
    many "not listed" answers it gives up and says not queued, so the caller reports the job's failure."""
    absent = 0
    for _ in range(10 * confirmations):
        try:
            out = subprocess.run(["squeue", "-h", "-j", str(job.job_id), "-o", "%T"], capture_output=True,
                                 text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            out = None
        if out is not None and out.returncode == 0:
            if out.stdout.strip():
                return True
            absent += 1
            if absent >= confirmations:
                return False
        time.sleep(interval_s)
    return False


def shard_result_path(result: dict) -> str:
    """The folder an eval shard wrote its report to, from ``run_eval``'s returned summary."""
    if not result.get("out_dir"):
        raise KeyError(f"eval shard result has no out_dir (keys: {', '.join(sorted(result))})")
    return str(result["out_dir"])


def _as_dict(cfg: Config) -> dict:
    from videoconvmae.config import to_dict

    return to_dict(cfg)
