"""A one-node SLURM cluster on localhost for integration tests (see ../shared/SLURM-LOCAL.md).

Installs Debian's slurm-wlm and munge when missing (root only), starts munged (unless one already
runs), slurmctld and slurmd with a private config, state and ports under a temporary directory,
and stops exactly the daemons it started, by the pids in their pid files.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

SLURM_PORTS = (16817, 16818)  # away from the defaults, so a real cluster's daemons never clash


class SlurmUnavailable(RuntimeError):
    pass


def install_if_missing() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurm-wlm/munge are not installed and this is not root (apt-get needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(command)} failed: {result.stderr[-500:]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _start_munge() -> int | None:
    """Returns the pid of the munged we started, or None when one was already running."""
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "-c", "-k", str(key)], check=True)
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    for directory in (Path("/run/munge"), Path("/var/lib/munge"), Path("/var/log/munge")):
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    for _ in range(50):
        pid_file = Path("/run/munge/munged.pid")
        if pid_file.exists() and pid_file.read_text().strip():
            return int(pid_file.read_text())
        time.sleep(0.1)
    raise SlurmUnavailable("munged did not start")


def _write_conf(tmp: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory_mb = 4000
    for sub in ("state", "spool"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    conf = tmp / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=sslbench",
        f"SlurmctldHost={host}",
        "AuthType=auth/munge",
        "SlurmUser=root",
        f"SlurmctldPort={SLURM_PORTS[0]}",
        f"SlurmdPort={SLURM_PORTS[1]}",
        f"StateSaveLocation={tmp / 'state'}",
        f"SlurmdSpoolDir={tmp / 'spool'}",
        f"SlurmctldPidFile={tmp / 'slurmctld.pid'}",
        f"SlurmdPidFile={tmp / 'slurmd.pid'}",
        f"SlurmctldLogFile={tmp / 'slurmctld.log'}",
        f"SlurmdLogFile={tmp / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        f"NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    return conf


def _stop(pid_file: Path) -> None:
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().strip() or 0)
    if pid and _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _pid_alive(pid):
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


@contextmanager
def local_slurm(tmp: Path):
    """Yields the environment (with SLURM_CONF) in which sbatch/squeue/submitit reach the cluster."""
    install_if_missing()
    munge_pid = _start_munge()
    conf = _write_conf(tmp)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started = []
    try:
        for daemon, pid_file in (("slurmctld", tmp / "slurmctld.pid"), ("slurmd", tmp / "slurmd.pid")):
            subprocess.run([daemon, "-f", str(conf)], env=env, check=True, timeout=60)
            started.append(pid_file)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            if state.returncode == 0 and state.stdout.strip() in ("idle", "mixed", "allocated"):
                break
            time.sleep(0.5)
        else:
            log = (tmp / "slurmctld.log").read_text()[-2000:] if (tmp / "slurmctld.log").exists() else ""
            raise SlurmUnavailable(f"the node did not become idle: {state.stdout} {state.stderr}\n{log}")
        yield env
    finally:
        for pid_file in reversed(started):
            _stop(pid_file)
        if munge_pid is not None and _pid_alive(munge_pid):
            os.kill(munge_pid, signal.SIGTERM)
