"""Ray as a resource: the fan-out of the engine's ``map_tasks(function, items)`` contract.

Three ways to run a fan-out, chosen by the resource's configuration (one home: :class:`RayFanout`):

- ``serial`` (no ``address``, ``local`` off; the ``local`` mode's default): in process, no Ray at
  all. On a small machine this is the fastest path for the demo (see the README section "Ray").
- a Ray cluster at ``address`` (production: ``dg.EnvVar("RAY_ADDRESS")``, e.g. the head of
  ``make services``): the step connects as a driver and starts no process of its own.
- ``local=True``: a private single-node Ray head started for the step by a supervisor process, on
  127.0.0.1 with free ports and its own temp dir, and stopped when the step ends.

Reference-first state: the mapped function (which binds the large frames — the returns history,
dollar volume) is put into the object store once per ``map_tasks`` call and every task receives
the reference; a worker deserialises it once and reuses it for the next tasks of the same call.

Zombie purge: the supervisor makes itself the child subreaper of the Ray processes it starts, so
every one of them (including agents and workers orphaned by a dying raylet) stays its descendant.
It waits on its stdin: when the step closes the pipe (a normal end, a failure, a cancellation) or
dies (SIGKILL closes the pipe too), it kills every descendant by process id and exits. No cluster
is ever discovered from ``/tmp/ray/ray_current_cluster``: the driver always connects to an
explicit address, so a stale cluster file cannot make a run hang.
"""

import contextlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster_ray import LocalRay, RayResource
from pydantic import Field, PrivateAttr

from tvq_resources.ray_supervisor import READY

LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class FanoutError(RuntimeError):
    """A fan-out could not run, or one of its tasks failed (the message names the task)."""


@dataclass
class LocalHead:
    """A supervised private Ray head (see :mod:`tvq_resources.ray_supervisor`)."""

    process: subprocess.Popen
    address: str
    temp_dir: str
    pids: list[int]
    seconds: float
    attempts: int = 1

    @classmethod
    def start(
        cls,
        *,
        num_cpus: int | None,
        timeout: float,
        attempts: int = 3,
        temp_root: str | None = None,
        dashboard: bool = False,
    ) -> "LocalHead":
        """Start a supervised head; a start that fails (on a loaded machine the raylet gives up
        on its agents) is purged and retried, ``attempts`` times in all within ``timeout``."""
        begun = time.perf_counter()
        deadline = time.monotonic() + timeout
        failures = []
        for _ in range(attempts):
            head = cls._attempt(
                num_cpus=num_cpus, deadline=deadline, temp_root=temp_root, dashboard=dashboard
            )
            if isinstance(head, cls):
                head.seconds = time.perf_counter() - begun
                head.attempts = len(failures) + 1
                return head
            failures.append(head)
            if time.monotonic() >= deadline:
                break
        raise FanoutError(
            f"local Ray head did not start ({len(failures)} attempts, {timeout:.0f} s): "
            + "; ".join(failures)
        )

    @classmethod
    def _attempt(
        cls, *, num_cpus: int | None, deadline: float, temp_root: str | None, dashboard: bool
    ):
        temp_dir = tempfile.mkdtemp(prefix="tvq-ray-", dir=temp_root)
        supervisor = [sys.executable, "-m", "tvq_resources.ray_supervisor"]
        process = subprocess.Popen(
            [*supervisor, temp_dir, str(num_cpus or 0), *(["dashboard"] if dashboard else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            # Its own session: a signal to the step's process group never skips the purge.
            start_new_session=True,
        )
        assert process.stdout is not None
        head = cls(process, "", temp_dir, [], 0.0)
        answer = []
        reader = threading.Thread(target=lambda: answer.append(process.stdout.readline()))
        reader.daemon = True
        reader.start()
        reader.join(max(deadline - time.monotonic(), 0.0))
        line = answer[0] if answer else ""
        if not line.startswith(READY):
            head.stop(remove=False)  # keep the logs the error points to
            return f"{line.strip() or 'no answer in time'} (logs under {temp_dir})"
        _, head.address, pids = line.split(" ", 2)
        head.pids = json.loads(pids)
        return head

    def stop(self, timeout: float = 60.0, *, remove: bool = True) -> None:
        """Close the pipe (the supervisor purges every Ray process), wait for it, and remove the
        head's temp dir (sessions, logs, spilled objects)."""
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self._kill_recorded()
        if remove:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _kill_recorded(self) -> None:
        """A supervisor that did not finish its purge: kill the head's recorded processes (those
        whose command line still names this head's temp dir, so a reused pid is never hit)."""
        import psutil

        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if any(self.temp_dir in part for part in process.cmdline()):
                    process.kill()


# --------------------------------------------------------------------------------------------
# map_tasks implementations
# --------------------------------------------------------------------------------------------
@dataclass
class SerialMap:
    """``[function(i) for i in items]`` in process; counts calls and tasks like :class:`RayMap`."""

    calls: int = 0
    tasks: int = 0

    mode = "serial"
    address = "in-process"

    def __call__(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        self.calls += 1
        self.tasks += len(items)
        return [function(item) for item in items]


_WORKER_CACHE: dict[str, Any] = {}


def _run_task(holder: list, item: Any) -> Any:
    """A Ray task: the function is fetched (by reference) and deserialised once per worker per
    ``map_tasks`` call, then applied to ``item``. The reference is wrapped in a list so that Ray
    passes it unresolved."""
    import ray

    reference = holder[0]
    key = reference.hex()
    function = _WORKER_CACHE.get(key)
    if function is None:
        _WORKER_CACHE.clear()  # one call at a time per worker: keep only the newest function
        function = _WORKER_CACHE[key] = ray.get(reference)
    return function(item)


def _describe(item: Any, limit: int = 120) -> str:
    text = repr(item)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class RayMap:
    """``map_tasks`` on the connected Ray cluster: ``function`` is ``ray.put`` once per call and
    every task gets the reference; results in the order of ``items``; a failing task is re-raised
    as :class:`FanoutError` naming the task and the item, chained to the original exception."""

    address: str
    calls: int = 0
    tasks: int = 0
    task_names: list[str] = field(default_factory=list)

    mode = "ray"

    def __call__(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        import ray

        if not ray.is_initialized():  # ray.put would silently start a local cluster
            raise FanoutError(f"map_tasks: not connected to the Ray cluster at {self.address}")
        self.calls += 1
        items = list(items)
        if not items:
            return []
        label = getattr(function, "__qualname__", type(function).__name__)
        try:
            reference = ray.put(function)
        except (TypeError, pickle.PicklingError, AttributeError) as error:
            raise FanoutError(
                f"map_tasks: {label!r} over {len(items)} items cannot be sent to Ray: it is not "
                f"picklable ({type(error).__name__}: {error}). Bind only picklable state (no "
                "locks, open files or connections); ray.util.inspect_serializability(function) "
                "names the culprit."
            ) from error
        remote = ray.remote(_run_task)
        call = self.calls
        names = [f"tvq:{call}:{index}:{label}" for index in range(len(items))]
        references = [
            remote.options(name=name, max_retries=0).remote([reference], item)
            for name, item in zip(names, items, strict=True)
        ]
        self.tasks += len(items)
        self.task_names.extend(names)
        results = []
        for index, (item, pending) in enumerate(zip(items, references, strict=True)):
            try:
                results.append(ray.get(pending))
            except ray.exceptions.RayError as error:
                for rest in references[index + 1 :]:
                    with contextlib.suppress(Exception):
                        ray.cancel(rest)
                cause = getattr(error, "cause", None) or error
                raise FanoutError(
                    f"map_tasks: Ray task {index + 1}/{len(items)} ({names[index]}) of {label!r} "
                    f"on item {_describe(item)} failed: {type(cause).__name__}: {cause}"
                ) from cause
        return results


TaskMap = SerialMap | RayMap


# --------------------------------------------------------------------------------------------
# The Dagster resource
# --------------------------------------------------------------------------------------------
class RayFanout(LocalRay):
    """The ``ray`` resource: a dagster-ray ``RayResource`` whose :meth:`task_map` fans out the
    engine's ``map_tasks`` (serial, a Ray cluster at ``address``, or a private local head)."""

    address: str | None = Field(
        default=None,
        description="Ray cluster (GCS) address host:port to connect to, e.g. the head of "
        "`make services`. Production binds dg.EnvVar('RAY_ADDRESS'). Empty: no cluster.",
    )
    local: bool = Field(
        default=False,
        description="Without an address: start a private single-node Ray head for the step (own "
        "temp dir, loopback, stopped with the step) instead of the serial in-process path.",
    )
    num_cpus: int | None = Field(
        default=None, description="CPUs of the private local head (default: all)."
    )
    start_timeout: float = Field(
        default=300.0, description="Seconds to wait for the private local head to start."
    )

    _head: Any = PrivateAttr(default=None)
    _map: Any = PrivateAttr(default=None)

    @property
    def name(self) -> str:
        return "RayFanout"

    @property
    def ray_address(self) -> str | None:  # type: ignore[override]
        return self.address or None

    @property
    def mode(self) -> str:
        return "ray" if (self.address or self.local) else "serial"

    @property
    def head(self) -> LocalHead | None:
        return self._head

    def connect(self, context) -> Any:
        """Nothing in serial mode; otherwise ``ray.init`` on an explicit address (never the
        discovery of a ``ray_current_cluster`` file)."""
        if self.mode == "serial":
            return None
        address = self.ray_address
        loopback = address is None or address.split(":")[0] in ("127.0.0.1", "localhost")
        if loopback:
            # Ray replaces a loopback address by the machine's unless multi-node clustering is
            # off; a head on 127.0.0.1 (ours, or `make services`) is then unreachable.
            os.environ.setdefault(LOOPBACK_VARIABLE, "0")
        import ray
        import ray._private.ray_constants as constants

        if loopback:  # ray was imported before the variable was set
            constants.ENABLE_RAY_CLUSTER = False
        if address is None:
            self._head = LocalHead.start(num_cpus=self.num_cpus, timeout=self.start_timeout)
            address = self._head.address
            context.log.info(
                f"Started a private Ray head at {address} in {self._head.seconds:.1f} s "
                f"({self._head.attempts} attempt(s)) "
                f"(pids {self._head.pids}, temp dir {self._head.temp_dir})"
            )
        try:
            self._context = ray.init(
                address=address,
                log_to_driver=False,
                **self.ray_init_options,
            )
        except BaseException:
            self._stop_head()
            raise
        self._map = RayMap(address=address)
        return self._context

    def on_connect(self, context) -> None:
        if self._context is not None:
            context.log.info(f"Connected to Ray at {self._map.address}")

    def cleanup(self, context, exception: BaseException | None) -> None:
        try:
            super().cleanup(context, exception)
        finally:
            self._stop_head()

    def _stop_head(self) -> None:
        if self._head is not None:
            self._head.stop()
            self._head = None

    def task_map(self) -> TaskMap:
        """The ``map_tasks`` to pass to the engine: serial in process, or on the connected Ray."""
        if self.mode == "serial":
            return SerialMap()
        if self._map is None:
            raise FanoutError(
                "the ray resource is not connected (used outside a Dagster step, or with "
                "lifecycle.connect off)"
            )
        return RayMap(address=self._map.address)


def task_map(resource: RayResource) -> TaskMap:
    """The ``map_tasks`` of any dagster-ray resource: :meth:`RayFanout.task_map`, or a
    :class:`RayMap` on the cluster another connected ``RayResource`` (e.g. KubeRay) opened."""
    if isinstance(resource, RayFanout):
        return resource.task_map()
    if not resource.connected:
        raise FanoutError(f"the ray resource {resource.display_name} is not connected")
    return RayMap(address=str(resource.ray_address))


@contextlib.contextmanager
def connected(resource: RayFanout) -> Iterator[RayFanout]:
    """The resource set up and torn down outside a Dagster step (benchmarks, scripts)."""
    with resource.yield_for_execution(dg.build_init_resource_context()) as ready:
        yield ready


def tournament_metadata(chosen: TaskMap, seconds: float) -> dict[str, Any]:
    """How a tournament ran, for the ``backtest`` asset's metadata."""
    return {
        "tournament_mode": chosen.mode,
        "tournament_address": chosen.address,
        "tournament_map_calls": chosen.calls,
        "tournament_tasks": chosen.tasks,
        "tournament_seconds": round(seconds, 3),
    }
