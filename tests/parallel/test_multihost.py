"""Multi-host start: which environments trigger jax.distributed.initialize, and with what."""
import jax
import pytest

from jaxpetct.parallel import multihost


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    return seen


def test_detects_schedulers_from_their_environment():
    assert multihost.detect_cluster({}).kind == "single"
    assert multihost.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).kind == "single"
    slurm = multihost.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "2"})
    assert (slurm.kind, slurm.num_processes, slurm.process_id) == ("slurm", 4, 2)
    ompi = multihost.detect_cluster({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"})
    assert (ompi.kind, ompi.num_processes, ompi.process_id) == ("ompi", 2, 1)
    tpu = multihost.detect_cluster({"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3", "TPU_WORKER_ID": "3"})
    assert (tpu.kind, tpu.num_processes, tpu.process_id) == ("tpu", 4, 3)
    assert multihost.detect_cluster({"TPU_WORKER_HOSTNAMES": "localhost"}).kind == "single"
    with pytest.raises(multihost.MultihostError, match="SLURM_NTASKS"):
        multihost.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "many"})


def test_initialize_only_when_multi_process(calls):
    assert multihost.initialize(env={}).kind == "single" and calls == []
    multihost.initialize(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "2"})
    assert calls == [{}]  # JAX's own SLURM detection finds coordinator and ranks
    multihost.initialize(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1, env={})
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
    with pytest.raises(multihost.MultihostError, match="together"):
        multihost.initialize(coordinator_address="10.0.0.1:1234")
    assert multihost.initialize(env={}, force=True).kind == "forced" and calls[-1] == {}
    assert multihost.process_count() == 1 and multihost.process_index() == 0 and multihost.is_primary()


def test_initialize_failure_is_reported_with_context(monkeypatch):
    def boom(**kw):
        raise RuntimeError("connection refused")

    monkeypatch.setattr(jax.distributed, "initialize", boom)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    with pytest.raises(multihost.MultihostError, match="slurm job of 4 processes.*connection refused"):
        multihost.initialize(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "2"})
