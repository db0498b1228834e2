"""The supervisor of a private Ray head: ``python -m tvq_resources.ray_supervisor TEMP_DIR CPUS``.

It makes itself the child subreaper, starts ``ray start --head --block`` as its child (loopback,
free ports, its own temp dir), prints ``TVQ_RAY_READY <address> <pids>`` once the head is up, then
waits on its stdin. End of file — the step closed the pipe, or died, even by SIGKILL — or a
SIGTERM/SIGINT/SIGHUP makes it kill every descendant by process id: the Ray processes, and any
agent or worker orphaned by a dying raylet (re-parented to this subreaper). Kept free of Dagster
imports so that it starts fast.
"""

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

# Environment of the Ray processes a supervisor starts: loopback only (Ray resolves 127.0.0.1 to
# the machine's address unless multi-node clustering is off), no token (a local driver connects
# by explicit address), no usage reporting, and agent start-up waits long enough for a loaded
# machine (the default gives up after ~15-60 s and the raylet aborts).
HEAD_ENVIRONMENT = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_agent_register_timeout_ms": "300000",
}
# ``ray start`` flags that take a port: all chosen free at start so that concurrent clusters on
# one machine never collide on Ray's fixed defaults (8265, 52365, 10001, ...).
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
    "--ray-client-server-port",
    "--node-manager-port",
    "--object-manager-port",
)
READY = "TVQ_RAY_READY"
PR_SET_CHILD_SUBREAPER = 36


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def head_command(
    temp_dir: str, *, num_cpus: int | None, block: bool, dashboard: bool = False
) -> tuple[list[str], str, dict[str, int]]:
    """``ray start --head`` on 127.0.0.1 with every port free and its own temp dir; returns the
    command, the GCS address a driver connects to, and the ports by flag."""
    ports = {flag: free_port() for flag in PORT_FLAGS}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    command = [
        ray,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--include-dashboard={str(dashboard).lower()}",
        "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    if block:
        command.append("--block")
    return command, f"127.0.0.1:{ports['--port']}", ports


# Port files the raylet waits for (``{session}/{name}_{node id}``, the port as text), by the
# ``ray start`` flag that fixes the port. Ray 2.60's raylet gives each of them a hard-coded 15 s
# (``WaitForPersistedPort``; ``RAY_agent_register_timeout_ms`` does not apply) and aborts the
# node after that; on a loaded machine the dashboard agent's imports alone take longer. The ports
# are fixed by our flags, so the supervisor writes these files itself as soon as the node id is
# known; the agents write the same values when they are up.
PORT_FILES = {
    "dashboard_agent_listen_port": "--dashboard-agent-listen-port",
    "metrics_agent_port": "--dashboard-agent-grpc-port",
    "metrics_export_port": "--metrics-export-port",
    "runtime_env_agent_port": "--runtime-env-agent-port",
}


def _persist_agent_ports(temp_dir: str, ports: dict[str, int]) -> bool:
    """Write the agents' port files once the session and its node id exist; True when done."""
    session = os.path.join(temp_dir, "session_latest")
    try:
        names = os.listdir(session)
    except OSError:
        return False
    gcs = [name for name in names if name.startswith("gcs_server_port_")]
    if not gcs:
        return False
    node = gcs[0].removeprefix("gcs_server_port_")
    for name, flag in PORT_FILES.items():
        path = os.path.join(session, f"{name}_{node}")
        if not os.path.exists(path):
            partial = f"{path}.tvq"
            with open(partial, "w") as out:
                out.write(str(ports[flag]))
            os.replace(partial, path)
    return True


def _descendants() -> list:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _purge(grace: float = 5.0) -> list[int]:
    """Terminate, then kill, every descendant of this process (again while new ones appear, e.g.
    spawned by a ``ray start`` that was mid-way); returns their pids."""
    killed: list[int] = []
    for _ in range(5):
        round_ = _purge_once(grace)
        if not round_:
            break
        killed.extend(round_)
    return killed


def _purge_once(grace: float) -> list[int]:
    import psutil

    victims = _descendants()
    for process in victims:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(victims, timeout=grace)
    for process in alive + _descendants():
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace)
    # Reap orphans re-parented to this subreaper so that none is left as a zombie entry.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    return [process.pid for process in victims]


def supervise(temp_dir: str, num_cpus: int | None, dashboard: bool = False) -> int:
    """Start a Ray head as a child, report ``READY address pids`` on stdout, purge on stdin EOF."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"ERROR prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}", flush=True)
        return 1
    # Signals that end the step's session end this process too: purge first.
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, lambda *_: _purge_and_exit(0))
    # From the first moment: the step's end (or death) closes stdin, even during start-up.
    watcher = threading.Thread(target=lambda: (sys.stdin.read(), _purge_and_exit(0)))
    watcher.start()
    command, address, ports = head_command(
        temp_dir, num_cpus=num_cpus, block=True, dashboard=dashboard
    )
    log_path = os.path.join(temp_dir, "ray-start.log")
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **HEAD_ENVIRONMENT},
        )
    persisted = False
    while head.poll() is None:
        persisted = persisted or _persist_agent_ports(temp_dir, ports)
        with open(log_path) as written:
            if "Ray runtime started" in written.read():
                break
        time.sleep(0.2)
    else:
        with contextlib.suppress(OSError):
            print(f"ERROR ray start exited with {head.returncode}; see {log_path}", flush=True)
        _purge_and_exit(1)
    pids = [process.pid for process in _descendants()]
    try:
        print(f"{READY} {address} {json.dumps(pids)}", flush=True)
    except OSError:  # the step is gone
        _purge_and_exit(0)
    watcher.join()
    return 0


def _purge_and_exit(code: int) -> None:
    _purge()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(supervise(sys.argv[1], int(sys.argv[2]) or None, sys.argv[3:] == ["dashboard"]))
