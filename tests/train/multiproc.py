"""Start several real `launch.py` processes on 127.0.0.1 (jax.distributed over gloo, CPU) and collect them."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Outcome:
    returncode: Optional[int]  # None: killed on purpose
    stdout: str
    stderr: str


def launch_processes(args: Sequence[str], env: dict, *, processes: int, devices: int, timeout: float = 900,
                     kill_when: Optional[Callable[[], bool]] = None) -> list[Outcome]:
    """Run `launch.py args` as `processes` OS processes with `devices` virtual CPU devices each.

    With `kill_when`, every process is SIGKILLed as soon as it returns True (a preempted pod loses all hosts).
    A single process (processes=1) runs without jax.distributed, as a user on one machine would.
    """
    env = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    port = free_port()
    procs = []
    for i in range(processes):
        cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--noprogress", *args]
        if processes > 1:
            cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={i}"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + timeout
    killed = False
    try:
        while any(p.poll() is None for p in procs):
            if kill_when is not None and kill_when():
                for p in procs:
                    p.send_signal(signal.SIGKILL)
                killed = True
                break
            if time.time() > deadline:
                raise TimeoutError(f"launch.py x{processes} did not finish in {timeout} s")
            time.sleep(0.05)
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [Outcome(None if killed else p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def summary_lines(stdout: str) -> list[str]:
    """The lines of launch.py's closing summary that must agree between hosts (losses, metrics; not timings)."""
    return [line for line in stdout.splitlines()
            if line.startswith(("stage ", "eval ", "validation loss", "lesion probe", "dataset "))]
