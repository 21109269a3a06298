"""Orbax checkpoints that make a resumed run indistinguishable from an uninterrupted one.

A checkpoint holds everything the next step depends on: the train state pytree (trainable params, frozen
params, optimizer state, step, RNG key), the Grain iterator state (so the resumed run sees exactly the
batches it would have seen) and a small JSON record (stage, config fingerprint, metrics). Orbax writes into a
temporary directory and renames on commit, so a run killed mid-save (SIGKILL, preemption) never leaves a
checkpoint that looks complete. Restoring takes an abstract target with shardings, which is how a checkpoint
saved on one mesh is laid out on another.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_cm

log = logging.getLogger(__name__)


class _NoMissingMetricWarning(logging.Filter):
    """Orbax warns on every save without metrics when best-by-metric is on; most steps have no val_loss by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMissingMetricWarning())

_STATE, _DATA, _META = "state", "data", "meta"


def _grain_handler():
    import grain

    return grain.checkpoint.CheckpointHandler()


class Checkpointer:
    """Keep-N latest plus best-by-metric checkpoints of one training stage, saved asynchronously.

    `best_metric` names a key of the `metrics` dict passed to `save` (e.g. "val_loss"); with it the best
    `keep_best` checkpoints survive beside the `keep` most recent ones.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save_every: int,
        keep: int = 2,
        best_metric: Optional[str] = None,
        best_mode: str = "min",
        keep_best: int = 1,
        async_save: bool = True,
    ):
        if save_every < 1:
            raise ValueError(f"checkpoint save_every must be >= 1, got {save_every}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        self.best_metric = best_metric
        policies: list[Any] = [ocp_cm.LatestN(n=keep)]
        if best_metric:
            policies.append(
                ocp_cm.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=(best_mode == "min"),
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp_cm.AnySavePolicy(
                [ocp_cm.FixedIntervalPolicy(save_every), ocp_cm.PreemptionCheckpointingPolicy()]
            ),
            preservation_policy=ocp_cm.AnyPreservationPolicy(policies),
            best_fn=(lambda m: m[best_metric]) if best_metric else None,
            best_mode=best_mode,
            keep_checkpoints_without_metrics=True,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=(_STATE, _DATA, _META),
            item_handlers={
                _STATE: ocp.StandardCheckpointHandler(),
                _DATA: _grain_handler(),
                _META: ocp.JsonCheckpointHandler(),
            },
        )
        self._preempted = threading.Event()

    # ---- saving -------------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        *,
        data_iter: Any = None,
        meta: Optional[dict] = None,
        metrics: Optional[dict] = None,
        force: bool = False,
    ) -> bool:
        """Save if the interval (or `force`, e.g. at the end or on SIGTERM) says so; returns whether it did."""
        args = {_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(dict(meta or {}))}
        if data_iter is not None:
            import grain

            args[_DATA] = grain.checkpoint.CheckpointSave(data_iter)
        if self.best_metric and (metrics is None or self.best_metric not in metrics):
            metrics = None  # a checkpoint without the metric is kept only as one of the latest N
        saved = self._manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=force)
        if saved:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def due(self, step: int) -> bool:
        """Whether `save(step, ...)` will write by the interval (the loop reads a step's metrics before that)."""
        return step % self.save_every == 0

    def wait(self) -> None:
        """Block until async saves are committed (call before reading them or exiting)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    # ---- restoring ----------------------------------------------------------------------------------
    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def best_step(self) -> Optional[int]:
        return self._manager.best_step() if self.best_metric else None

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, abstract_state: Any, *, step: Optional[int] = None, data_iter: Any = None) -> tuple[Any, dict]:
        """Restore onto `abstract_state` (a pytree of jax.ShapeDtypeStruct carrying the target shardings).

        The data iterator, when given, is restored in place. Returns (state, meta).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        args = {_STATE: ocp.args.StandardRestore(abstract_state), _META: ocp.args.JsonRestore()}
        if data_iter is not None:
            import grain

            args[_DATA] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        return restored[_STATE], dict(restored[_META] or {})

    # ---- preemption ---------------------------------------------------------------------------------
    def watch_sigterm(self) -> None:
        """Turn SIGTERM (how TPU/GPU schedulers announce preemption) into a flag the loop checks each step.

        Saving from inside a signal handler would race the step in flight, so the loop saves at the next step
        boundary instead, then exits. Multi-host preemption notices arrive through Orbax's own policy.
        """
        if threading.current_thread() is not threading.main_thread():
            return

        def _handler(signum, frame):  # noqa: ARG001
            log.warning("SIGTERM received: will checkpoint at the next step boundary and stop")
            self._preempted.set()

        signal.signal(signal.SIGTERM, _handler)

    def preempted(self, step: int) -> bool:
        return self._preempted.is_set() or bool(self._manager.reached_preemption(step))


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with each leaf's sharding) describing `tree`: the restore target for the same layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
