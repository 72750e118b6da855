"""Slurm resources for ``videoconvmae launch`` (``slurm.*``). Read only by videoconvmae/launch/."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SlurmConfig:
    cluster: str = "slurm"  # slurm | local (subprocesses on this machine) | debug (in this process): same job
    nodes: int = 1  # nodes per job
    gpus_per_node: int = 8  # GPUs per node, a task each; 0 = CPU job (train.device=cpu: default 0)
    tasks_per_node: int = 0  # ranks per node; 0 = one per GPU (a CPU job: 1); with GPUs: 0 or gpus_per_node
    cpus_per_task: int = 10  # CPU cores per task (data workers + main)
    mem_gb: int = 0  # memory per node in GB; 0 = the cluster's default
    partition: str = ""  # Slurm partition; '' = the cluster's default
    account: str = ""  # Slurm account
    qos: str = ""  # Slurm QOS
    constraint: str = ""  # node feature constraint, e.g. volta32gb
    timeout_min: int = 4320  # job time limit in minutes
    signal_delay_s: int = 120  # seconds before the time limit when the job is signalled to checkpoint
    comment: str = ""  # job comment
    job_name: str = "videoconvmae"  # job name shown by squeue
    array: int = 0  # eval: shard over this many array tasks (+ a merge job); 0 = no array
    array_parallelism: int = 64  # at most this many array tasks run at once
    extra: list[str] = field(default_factory=list)  # extra sbatch options as key=value (e.g. exclude=node1)
    setup: list[str] = field(default_factory=list)  # shell lines run before srun (module load, conda activate)
    folder: str = ""  # submitit folder (pickles, %j logs); '' = <train.output_dir>/slurm
    max_num_timeout: int = 3  # requeues allowed after hitting the time limit (preemptions are not counted)
    python: str = ""  # command that runs python in the job (e.g. a container wrapper); '' = this interpreter
    registry: str = ""  # jobs registry (JSON lines); '' = $VIDEOCONVMAE_JOBS or ~/.videoconvmae/jobs.jsonl
