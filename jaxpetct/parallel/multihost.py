"""Start JAX's multi-process runtime when (and only when) the job spans several hosts.

`jax.distributed.initialize()` must run before any other JAX call in every process of a multi-host job, and must
not run in a single-host job (it would wait for a coordinator). TPU pods, SLURM and Open MPI all announce
themselves in the environment, and JAX auto-detects the coordinator from the same variables; anywhere else the
launcher passes the coordinator address, process count and process id explicitly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
from jaxpetct.errors import UserError

log = logging.getLogger(__name__)


class MultihostError(UserError, RuntimeError):
    """The job looks multi-host but the distributed runtime could not be set up; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """What the environment says about the job: which scheduler, how many processes, and this one's rank."""

    kind: str  # 'tpu', 'slurm', 'ompi', 'explicit', 'forced' or 'single'
    num_processes: int  # -1 when the scheduler does not say (JAX's auto-detection finds out)
    process_id: int

    @property
    def multi_process(self) -> bool:
        return self.num_processes != 1


def _int(env: Mapping[str, str], *names: str) -> Optional[int]:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(str(value).split("(")[0].split(",")[0])
            except ValueError:
                raise MultihostError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def detect_cluster(env: Optional[Mapping[str, str]] = None) -> Cluster:
    """Read the scheduler's environment variables (pure: pass a dict to test)."""
    env = os.environ if env is None else env
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", env.get("TPU_PROCESS_ADDRESSES", "")).split(",")
             if h.strip()]
    if len(hosts) > 1 or _int(env, "MEGASCALE_NUM_SLICES") not in (None, 1):
        return Cluster("tpu", len(hosts) if len(hosts) > 1 else -1,
                       _int(env, "TPU_WORKER_ID", "CLOUD_TPU_TASK_ID") or 0)
    slurm_tasks = _int(env, "SLURM_NTASKS", "SLURM_NPROCS")
    if "SLURM_JOB_ID" in env and slurm_tasks is not None and slurm_tasks > 1:
        return Cluster("slurm", slurm_tasks, _int(env, "SLURM_PROCID") or 0)
    ompi_size = _int(env, "OMPI_COMM_WORLD_SIZE")
    if ompi_size is not None and ompi_size > 1:
        return Cluster("ompi", ompi_size, _int(env, "OMPI_COMM_WORLD_RANK") or 0)
    return Cluster("single", 1, 0)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, local_device_ids: Optional[Sequence[int]] = None,
               env: Optional[Mapping[str, str]] = None, force: bool = False) -> Cluster:
    """Start the distributed runtime if the job is multi-host; returns what was detected.

    Explicit flags win; otherwise a TPU pod, a SLURM allocation with several tasks or an `mpirun` world larger
    than one triggers JAX's own auto-detection; a single process skips initialisation entirely. `force=True`
    calls JAX's auto-detection anyway (GCE TPU pods whose worker list lives only in the metadata server).
    """
    explicit = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise MultihostError("explicit multi-host start needs coordinator_address, num_processes and process_id "
                                 f"together (got {coordinator_address=}, {num_processes=}, {process_id=})")
        cluster = Cluster("explicit", int(num_processes), int(process_id))  # type: ignore[arg-type]
        if cluster.multi_process:
            _start(cluster, coordinator_address=coordinator_address, num_processes=num_processes,
                   process_id=process_id, local_device_ids=local_device_ids)
        return cluster
    cluster = detect_cluster(env)
    if force and not cluster.multi_process:
        cluster = Cluster("forced", -1, 0)
    if cluster.multi_process:
        _start(cluster, local_device_ids=local_device_ids)
    else:
        log.info("single-process job: jax.distributed is not initialised")
    return cluster


def _start(cluster: Cluster, **kwargs) -> None:
    if jax.distributed.is_initialized():
        log.info("jax.distributed already initialised; keeping the existing runtime")
        return
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # the runtime's own errors are opaque about which variable was missing
        raise MultihostError(f"jax.distributed.initialize failed for a {cluster.kind} job of "
                             f"{cluster.num_processes} processes (this is process {cluster.process_id}): {e}") from e
    log.info("jax.distributed up: process %d of %d (%s)", jax.process_index(), jax.process_count(), cluster.kind)


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_primary() -> bool:
    """Only process 0 writes shared files (checkpoint metadata, exports, logs)."""
    return jax.process_index() == 0


# ---- collectives every process must call together (no-ops in a single-process job) ------------------------------
# Decisions that end or shape a run (stop on divergence or preemption, which checkpoint is best, which length a
# batch is padded to) must be the same on every host, or the hosts run different programs and the job hangs. These
# helpers make them the same: each exchanges a few bytes through the devices, so call them where every process
# passes in the same order (never under a condition only one host sees).


class PrimaryFailed(RuntimeError):
    """Work that only process 0 does (build, export) failed there; the other processes raise this with its reason."""


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier called `name` (e.g. after process 0 wrote a shared file)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def allgather_ints(values: Sequence[int]) -> np.ndarray:
    """(processes, len(values)) int64: every process's `values` (the same length on every process)."""
    row = np.asarray(values, np.int64).reshape(1, -1)
    if jax.process_count() == 1:
        return row
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(row.astype(np.int32), tiled=True)).astype(np.int64)


def agree_max(values: Sequence[int]) -> tuple[int, ...]:
    """Element-wise maximum of `values` over the processes (e.g. the length every host pads its batch to)."""
    return tuple(int(v) for v in allgather_ints(values).max(axis=0))


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a SIGTERM seen by one host stops all of them)."""
    return bool(allgather_ints([int(bool(flag))]).max())


def allgather_json(obj: Any) -> list:
    """Every process's JSON-able `obj`, in process order (a few kB: schemas, statuses, error messages)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj, ensure_ascii=False).encode("utf-8"), np.uint8)
    longest = int(allgather_ints([data.size]).max())
    padded = np.zeros((1, longest), np.uint8)
    padded[0, : data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded, tiled=True))
    return [json.loads(bytes(r).rstrip(b"\0").decode("utf-8")) for r in rows]


def on_primary(fn: Callable[[], Any], what: str) -> Any:
    """Run `fn` on process 0 only (work that writes shared files), then hand its JSON-able result to every
    process; the others wait meanwhile. When `fn` raises on process 0, it re-raises there and every other
    process raises `PrimaryFailed` with the same one-line reason, instead of waiting at a barrier forever."""
    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others have been told
            error = e
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return result
    shared = allgather_json({"result": result, "error": None if error is None else
                             f"{type(error).__name__}: {' '.join(str(error).split())}"})[0]
    if error is not None:
        raise error
    if shared["error"] is not None:
        raise PrimaryFailed(f"{what} failed on process 0: {shared['error']}")
    return shared["result"]
