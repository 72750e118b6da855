"""A real Slurm for the launch tests: munged, MariaDB, slurmdbd, slurmctld and one slurmd per node.

``LocalSlurm(root)`` is one node (``localhost``); ``LocalSlurm(root, nodes=2)`` runs two slurmd on this host as
nodes ``n1`` / ``n2`` on 127.0.0.2 / 127.0.0.3 (Slurm's MultipleSlurmd), each in its own mount + UTS namespace
with a private /etc/hosts that names both nodes and its own hostname, so that inside a job ``n1`` resolves (it
is torch's MASTER_ADDR: the first host of the node list) without touching the host's /etc/hosts. Not real
isolation: both nodes share the filesystem, /dev/shm, the PIDs and the cores.

Every daemon runs as root (no systemd here) with its config, state, log and pid file under ONE folder,
on free TCP ports, with its own munge socket and key, so it never touches /etc/slurm, /run/munge or
another cluster on the same machine. Accounting (slurmdbd + MariaDB) is not optional: without it ``sacct``
fails and submitit cannot tell that a cancelled job is over.

Command line (from the repository root)::

    python tests/slurm_cluster.py start [--dir DIR] [--nodes 2]   # prints `export SLURM_CONF=...`
    python tests/slurm_cluster.py status --dir DIR
    python tests/slurm_cluster.py stop --dir DIR      # stops every daemon by its pid file (and leftover steps)

In pytest: ``cluster = LocalSlurm(tmp_dir).start()`` ... ``cluster.stop()``; ``unavailable_reason()`` says
why the daemons cannot start here (not root, Debian packages missing), for a clear skip.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "slurmctld", "slurmd", "sacctmgr",
            "sinfo", "sbatch", "srun", "scontrol", "sacct")
MULTI_NODE_BINARIES = ("unshare", "mount", "hostname")  # a private /etc/hosts and hostname per slurmd
CLUSTER_NAME = "vcmtest"
DB_PASSWORD = "vcm-slurm-test"


def unavailable_reason(nodes: int = 1) -> str | None:
    """Why a local Slurm of ``nodes`` nodes cannot be started on this machine, or None when it can."""
    if sys.platform != "linux":
        return f"a local Slurm needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"starting slurmd / slurmctld / munged needs root (running as uid {os.geteuid()})"
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"Slurm / munge / MariaDB binaries missing ({', '.join(missing)}): "
                "install slurm-wlm munge slurmdbd mariadb-server (tools/setup.sh)")
    if nodes > 1:
        missing = [b for b in MULTI_NODE_BINARIES if shutil.which(b) is None]
        if missing:
            return f"a {nodes}-node Slurm on one host needs {', '.join(missing)} (util-linux)"
    return None


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_resources() -> tuple[int, int]:
    """(CPUs, RealMemory in MB) of this machine, leaving 1 GB of memory to the system."""
    mem_kb = 4_000_000
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return os.cpu_count() or 1, max(1000, mem_kb // 1024 - 1024)


class SlurmStartError(RuntimeError):
    """A daemon did not come up; the message names it and the tail of its log."""


class LocalSlurm:
    """One Slurm cluster of ``nodes`` nodes living in ``root`` (1: node ``localhost``; more: ``n1``, ``n2``, ...)."""

    def __init__(self, root: str | os.PathLike, nodes: int = 1, share_cpus: int = 1):
        if not 1 <= nodes <= 9:
            raise ValueError(f"nodes: expected 1..9 (loopback addresses 127.0.0.2..10), got {nodes}")
        self.nodes = nodes
        self.share_cpus = share_cpus  # > 1: up to this many jobs share each CPU (the partition's OverSubscribe=FORCE)
        self.node_names = ["localhost"] if nodes == 1 else [f"n{i + 1}" for i in range(nodes)]
        self.root = Path(root).resolve()
        self.conf = self.root / "etc" / "slurm.conf"
        self.dbd_conf = self.root / "etc" / "slurmdbd.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket.2"
        self.db_dir = self.root / "mysql"
        self.db_socket = self.root / "mysql.sock"
        self.log_dir = self.root / "log"
        self.run_dir = self.root / "run"
        self.state_file = self.root / "cluster.json"

    # -- public ---------------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Environment variables every Slurm client (and submitit) needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def pid_files(self) -> dict[str, Path]:
        """Daemon name -> pid file, in start order (``slurmd-n1``, ``slurmd-n2``, ... for several nodes)."""
        names = ["munged", "mariadbd", "slurmdbd", "slurmctld", *self._slurmd_names()]
        return {name: self.run_dir / f"{name}.pid" for name in names}

    def _slurmd_names(self) -> list[str]:
        return ["slurmd"] if self.nodes == 1 else [f"slurmd-{n}" for n in self.node_names]

    def start(self, timeout_s: float = 90.0) -> LocalSlurm:
        reason = unavailable_reason()
        if reason:
            raise SlurmStartError(reason)
        for d in (self.root, self.munge_dir, self.log_dir, self.run_dir, self.root / "etc",
                  self.root / "state", self.root / "spool"):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)  # munged refuses group/other-writable folders; clients must reach the socket
        for node in self.node_names:
            (self.root / "spool" / node).mkdir(exist_ok=True)
        ctld_port, dbd_port, db_port, *slurmd_ports = _free_ports(3 + self.nodes)
        self.state_file.write_text(json.dumps({"nodes": self.node_names, "ports": {
            "slurmctld": ctld_port, "slurmd": slurmd_ports, "slurmdbd": dbd_port, "mariadb": db_port}}))
        try:
            self._start_munge()
            self._start_mariadb(db_port, timeout_s)
            self._write_confs(ctld_port, slurmd_ports, dbd_port, db_port)
            self._start_slurm(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        """Cancel this cluster's jobs, stop every daemon by its pid file (newest first), end leftover steps."""
        if self.conf.exists() and self._alive("slurmctld"):
            # a slurmd stopped while its steps still run (or with slurmctld gone) hangs for many seconds
            self.run("scancel", "--full", "--user", "root", check=False, timeout=30)
            deadline = time.time() + 15
            while time.time() < deadline and self.run("squeue", "-h", check=False, timeout=10).stdout.strip():
                time.sleep(0.2)
        # Newest first; the two at the end do not depend on each other and stop together.
        for group in (tuple(self._slurmd_names()), ("slurmctld",), ("slurmdbd",), ("mariadbd", "munged")):
            pids = {name: self._pid(name) for name in group}
            for pid in filter(None, pids.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.time() + timeout_s
            while time.time() < deadline and any(p and _pid_alive(p) for p in pids.values()):
                time.sleep(0.1)
            for name, pid in pids.items():
                if pid and _pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.pid_files()[name].unlink(missing_ok=True)
        # A step whose job was requeued as slurmd stopped can outlive it, and so can the srun of a batch script.
        for pid in self._leftover_steps():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _leftover_steps(self) -> list[int]:
        """slurmstepd and srun processes of THIS cluster (their environment names our slurm.conf)."""
        mine = f"SLURM_CONF={self.conf}\0".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if ((proc / "comm").read_text().strip() in ("slurmstepd", "srun")
                        and mine in (proc / "environ").read_bytes()):
                    found.append(int(proc.name))
            except OSError:
                continue
        return found

    def job_processes(self, job_id: str) -> list[int]:
        """Processes still running for job ``job_id`` of THIS cluster (``ID`` or array task ``ID_TASK``): its
        tasks and their slurmstepd. A requeued job reads PENDING while its previous attempt is still exiting."""
        array_id, _, task = str(job_id).partition("_")
        wanted = ([f"SLURM_ARRAY_JOB_ID={array_id}", f"SLURM_ARRAY_TASK_ID={task}"] if task
                  else [f"SLURM_JOB_ID={job_id}"])
        wanted = [f"\0{w}\0".encode() for w in wanted]
        mine = f"\0SLURM_CONF={self.conf}\0".encode()
        stepd = f"slurmstepd: [{array_id}.".encode()  # its title names the job's own id (an array task's too)
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                environ = b"\0" + (proc / "environ").read_bytes()
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if mine in environ and (all(w in environ for w in wanted) or (not task and cmdline.startswith(stepd))):
                found.append(int(proc.name))
        return found

    def status(self) -> dict[str, bool]:
        return {name: self._alive(name) for name in self.pid_files()}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(list(cmd), env=self._client_env(), capture_output=True, text=True, check=check,
                              timeout=timeout)

    # -- daemons --------------------------------------------------------------------------------------
    def _start_munge(self) -> None:
        key = self.munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))  # a private key: this cluster never talks to another munged
        key.chmod(0o600)
        self._spawn("munged", [_which("munged"), f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--pid-file={self.pid_files()['munged']}", f"--log-file={self.log_dir}/munged.log",
                               f"--seed-file={self.munge_dir}/munged.seed", "--force"], daemonizes=True)
        self._wait(lambda: self.munge_socket.exists(), 15, "munged", self.log_dir / "munged.log")

    def _start_mariadb(self, port: int, timeout_s: float) -> None:
        log = self.log_dir / "mariadb.log"
        if not (self.db_dir / "mysql").exists():
            with open(log, "ab") as out:
                subprocess.run([_which("mariadb-install-db"), "--no-defaults", "--user=root",
                                f"--datadir={self.db_dir}", "--auth-root-authentication-method=normal",
                                "--skip-test-db"],
                               stdout=out, stderr=subprocess.STDOUT, check=True, timeout=120)
        self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", "--user=root", f"--datadir={self.db_dir}",
                                 f"--socket={self.db_socket}", "--bind-address=127.0.0.1", f"--port={port}",
                                 f"--pid-file={self.pid_files()['mariadbd']}", f"--log-error={log}",
                                 "--skip-name-resolve", "--innodb-buffer-pool-size=32M"], daemonizes=False)
        sql = (f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';"
               f"CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;")

        def ready() -> bool:
            r = subprocess.run([_which("mariadb"), "--no-defaults", f"--socket={self.db_socket}", "-uroot", "-e", sql],
                               capture_output=True, timeout=20, check=False)
            return r.returncode == 0

        self._wait(ready, timeout_s, "mariadbd", log)

    def _node_lines(self, slurmd_ports: list[int]) -> list[str]:
        """slurmd's port / spool / pid / log lines and the NodeName + PartitionName lines."""
        cpus, mem_mb = _node_resources()
        r, log, run = self.root, self.log_dir, self.run_dir
        if self.nodes == 1:
            return [f"SlurmdPort={slurmd_ports[0]}", f"SlurmdSpoolDir={r}/spool", f"SlurmdPidFile={run}/slurmd.pid",
                    f"SlurmdLogFile={log}/slurmd.log",
                    f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
                    "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP" + self._sharing()]
        # Every node claims all cores (Slurm drains a node that declares more than it has); memory is split.
        lines = [f"SlurmdPort={slurmd_ports[0]}", f"SlurmdSpoolDir={r}/spool/%n", f"SlurmdPidFile={run}/slurmd-%n.pid",
                 f"SlurmdLogFile={log}/slurmd-%n.log"]
        for i, (node, port) in enumerate(zip(self.node_names, slurmd_ports)):
            lines.append(f"NodeName={node} NodeAddr=127.0.0.{i + 2} NodeHostname={node} Port={port} CPUs={cpus} "
                         f"RealMemory={max(1000, mem_mb // self.nodes)} State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.node_names)} Default=YES MaxTime=INFINITE State=UP"
                     + self._sharing())
        return lines

    def _sharing(self) -> str:
        return f" OverSubscribe=FORCE:{self.share_cpus}" if self.share_cpus > 1 else ""

    def _write_confs(self, ctld_port: int, slurmd_ports: list[int], dbd_port: int, db_port: int) -> None:
        r, log, run = self.root, self.log_dir, self.run_dir
        self.conf.write_text("\n".join([
            f"ClusterName={CLUSTER_NAME}",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={r}/state",
            f"SlurmctldPidFile={run}/slurmctld.pid",
            f"SlurmctldLogFile={log}/slurmctld.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=1000",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/linux",
            "JobAcctGatherFrequency=30",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=localhost",
            f"AccountingStoragePort={dbd_port}",
            f"AccountingStoragePass={self.munge_socket}",  # else clients look for the default munge socket
            "JobRequeue=0",  # jobs are not requeueable unless they ask (sbatch --requeue), as on many clusters
            "KillWait=5",
            "MinJobAge=300",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=1",
            *self._node_lines(slurmd_ports),
            "",
        ]))
        self.dbd_conf.write_text("\n".join([
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "DbdHost=localhost",
            f"DbdPort={dbd_port}",
            "SlurmUser=root",
            f"PidFile={run}/slurmdbd.pid",
            f"LogFile={log}/slurmdbd.log",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={db_port}",
            "StorageUser=slurm",
            f"StoragePass={DB_PASSWORD}",
            "StorageLoc=slurm_acct_db",
            "",
        ]))
        self.dbd_conf.chmod(0o600)  # slurmdbd refuses a readable config holding the DB password

    def _start_slurm(self, timeout_s: float) -> None:
        env = self._client_env()
        self._spawn("slurmdbd", [_which("slurmdbd")], daemonizes=True, env={**env, "SLURM_CONF": str(self.conf),
                                                                           "SLURMDBD_CONF": str(self.dbd_conf)})

        def cluster_added() -> bool:
            r = self.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME, check=False)
            return r.returncode == 0 or "already exists" in (r.stdout + r.stderr).lower()

        self._wait(cluster_added, timeout_s, "slurmdbd", self.log_dir / "slurmdbd.log")
        self._spawn("slurmctld", [_which("slurmctld"), "-f", str(self.conf), "-i"], daemonizes=True, env=env)
        if self.nodes == 1:
            self._spawn("slurmd", [_which("slurmd"), "-f", str(self.conf), "-N", "localhost"], daemonizes=True, env=env)
        else:
            self._start_node_slurmds(env)

        def idle() -> bool:
            r = self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10)
            states = [s.rstrip("*") for s in r.stdout.split()]
            return (r.returncode == 0 and len(states) == self.nodes
                    and all(s in ("idle", "mixed", "allocated") for s in states))

        log = self.log_dir / ("slurmd.log" if self.nodes == 1 else f"slurmd-{self.node_names[-1]}.log")
        self._wait(idle, timeout_s, "slurmctld / slurmd", log)

    def _start_node_slurmds(self, env: dict[str, str]) -> None:
        """One slurmd per node, each seeing a private /etc/hosts (both nodes named) and its own hostname."""
        hosts = self.root / "etc" / "hosts"
        base = "127.0.0.1 localhost\n"
        with contextlib.suppress(OSError):
            base = Path("/etc/hosts").read_text()
        hosts.write_text(base.rstrip("\n") + "\n" + "".join(f"127.0.0.{i + 2} {node}\n"
                                                           for i, node in enumerate(self.node_names)))
        hosts.chmod(0o644)
        for node in self.node_names:
            # --propagation private: the bind mount stays inside this namespace; jobs of the node inherit it
            script = (f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && hostname {node} && "
                      f"exec {shlex.quote(_which('slurmd'))} -f {shlex.quote(str(self.conf))} -N {node}")
            self._spawn(f"slurmd-{node}", ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c",
                                           script], daemonizes=True, env=env)

    # -- helpers --------------------------------------------------------------------------------------
    def _client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _spawn(self, name: str, cmd: list[str], daemonizes: bool, env: dict | None = None) -> None:
        with open(self.log_dir / f"{name}.out", "ab") as out:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env or self._client_env(), start_new_session=True, close_fds=True)
        if daemonizes:
            rc = proc.wait(timeout=60)  # the parent returns once the daemon forked and wrote its pid file
            if rc != 0:
                raise SlurmStartError(f"{name} exited with {rc}: {self._tail(self.log_dir / f'{name}.out')}")
        else:
            self.pid_files()[name].write_text(str(proc.pid))

    def _wait(self, ready, timeout_s: float, name: str, log: Path) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if ready():
                return
            time.sleep(0.3)
        raise SlurmStartError(f"{name} not ready after {timeout_s:.0f} s; {log}: {self._tail(log)}")

    @staticmethod
    def _tail(path: Path, n: int = 3) -> str:
        try:
            return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _pid(self, name: str) -> int | None:
        try:
            return int(self.pid_files()[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _alive(self, name: str) -> bool:
        pid = self._pid(name)
        return pid is not None and _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0): reap it if it is our child; a daemon's zombie (its parent is PID 1, which
    # in a container may never reap) counts as stopped
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="start / stop a real Slurm (1 or more nodes) under one folder")
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", help="cluster folder (start: default a new temp folder)")
    parser.add_argument("--nodes", type=int, default=None, help="start: number of nodes (default 1)")
    args = parser.parse_args(argv)
    if args.action != "start" and not args.dir:
        parser.error(f"{args.action} needs --dir")
    nodes = args.nodes
    if nodes is None:  # stop / status: the node count the cluster was started with
        state = Path(args.dir or ".", "cluster.json")
        nodes = len(json.loads(state.read_text()).get("nodes", [1])) if state.is_file() else 1
    cluster = LocalSlurm(args.dir or tempfile.mkdtemp(prefix="vcm-slurm-"), nodes=nodes)
    if args.action == "start":
        t0 = time.time()
        try:
            cluster.start()
        except SlurmStartError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"# Slurm ready in {time.time() - t0:.1f} s; stop with: python {sys.argv[0]} stop --dir {cluster.root}")
        print(f"export SLURM_CONF={cluster.conf}")
    elif args.action == "stop":
        cluster.stop()
    else:
        for name, alive in cluster.status().items():
            print(f"{name}: {'running' if alive else 'stopped'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
