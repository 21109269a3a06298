"""The stage loop reads a step's metrics one step late (the host never waits on a step it has no use for), yet the
NaN guard keeps its promise: no non-finite update ever reaches a saved state, and a checkpoint is written only
after its own step is known finite. On the two-weight model of test_step, so every number can be replayed."""
import numpy as np
import pytest

from jaxpetct.train.checkpoint import Checkpointer, abstract_like
from jaxpetct.train.loop import StageSpec, TrainingDiverged, prepare_state, run_stage
from jaxpetct.train.optimizer import ParamGroup
from jaxpetct.train.writers import read_metrics
from tests.train.test_stages import one_device
from tests.train.test_step import Line, batch, squared_error

SPEC = StageSpec("line", steps=10, peak_lr=1e-2, groups=(ParamGroup("all", r"^w"),), save_every=3, log_every=1,
                 best_metric="", async_checkpoints=False)


def stream(bad=None, skip=()):
    """Batches 1, 2, ... (batch `bad` has a NaN target; batches in `skip` are left out)."""
    i = 0
    while True:
        i += 1
        if i in skip:
            continue
        data = batch(seed=i)
        if i == bad:
            data["y"][3] = np.nan
        yield data


def train(workdir, it, **kw):
    return run_stage(Line(), squared_error, SPEC, train_iter=it, mesh=one_device(), workdir=str(workdir),
                     progress=False, **kw)


def saved(workdir):
    _, state, _, _, _ = prepare_state(Line(), SPEC, one_device())
    ckpt = Checkpointer(workdir / "checkpoints", save_every=3)
    step = ckpt.latest_step()
    restored, _ = ckpt.restore(abstract_like(state))
    ckpt.close()
    return step, int(restored.step), np.asarray(restored.params["w"][...])


@pytest.mark.parametrize("bad, then", [
    (5, (1, 2, 3, 4, 6)),  # read one step late: the step after it ran (its update is clean) before the stop
    (6, (1, 2, 3, 4, 5)),  # a save point: read at once, so the checkpoint never holds an unread step
])
def test_a_non_finite_step_stops_the_run_and_no_saved_state_holds_it(tmp_path, bad, then):
    with pytest.raises(TrainingDiverged, match=f"non-finite loss or gradient at step {bad - 1}"):
        train(tmp_path / "run", stream(bad=bad))
    step, state_step, w = saved(tmp_path / "run")
    assert step == state_step == 5 and np.all(np.isfinite(w))
    skip = tuple(i for i in range(1, 8) if i not in then)
    reference = train(tmp_path / "ref", stream(skip=skip), stop_after=5)
    np.testing.assert_array_equal(w, np.asarray(reference.state.params["w"][...]))  # bitwise: the same updates
    logged = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert logged == list(range(1, bad)), logged  # every finite step before it has its record, none after


def test_every_step_is_logged_and_the_host_reports_where_its_time_went(tmp_path):
    result = train(tmp_path, stream())
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11)) and result.last_step == 10
    assert all(r["input_s"] >= 0 and r["sync_s"] >= 0 for r in rows)
    assert result.metrics["loss"] == rows[-1]["loss"]
