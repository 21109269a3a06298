"""The one entry point: `python launch.py [--config FILE] [--workdir DIR] [--mode MODE] [--config.a.b=VALUE]`.

With no arguments it runs the embedded default end to end on a CPU: synthetic cohort -> TFDS build -> align ->
LoRA -> evaluation -> export, into runs/demo/. On a pod, run the same command on every host (TPU pods, SLURM
and Open MPI are detected; otherwise pass --coordinator_address/--num_processes/--process_id).

Modes: synth | build | train | eval | export | all (default) | plan.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))


def _unknown_override(error: Exception) -> None:
    """One line and exit 2 for a `--config.a.b=v` naming no setting: ml_collections fails while the flag is defined
    (it reads the overrides from sys.argv then), with a 50-line traceback."""
    key = str(error.args[0] if error.args else error).strip("\"'").split("'")[0]
    named = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.") and key in a.split("=")[0].split(".")]
    where = named[0] if named else "a --config.* override"
    print(f"error: {where}: the config has no setting {key!r} there (see the config file, or "
          f"`python launch.py --helpfull` for every --config.* flag)", file=sys.stderr)
    sys.exit(2)


try:
    _CONFIG = config_flags.DEFINE_config_file(
        "config", os.path.join(_HERE, "configs", "default.py"), "Experiment config file (configs/*.py).",
        lock_config=True)
except (AttributeError, KeyError) as e:
    _unknown_override(e)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Run directory: cohort, datasets, checkpoints, metrics.")
_MODE = flags.DEFINE_enum("mode", "all", ["synth", "build", "train", "eval", "export", "predict", "all", "plan"],
                          "What to run (plan: compile every stage on virtual CPU devices, write plan.json).")
_STAGE = flags.DEFINE_list("stage", None, "Train only these stages (default: the config's order).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (explicit multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-host).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Library chatter (Orbax, TFDS, XLA) at WARNING; this project's own progress lines at INFO.
    logging.set_verbosity(logging.WARNING)
    import logging as std_logging

    std_logging.getLogger("jaxpetct").setLevel(std_logging.INFO)
    from jaxpetct.parallel.multihost import initialize

    if _MODE.value != "plan":  # a plan is one process on virtual CPU devices: no distributed runtime
        initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    import jaxpetct.jobs as jobs

    try:
        cfg = _CONFIG.value
        cfg.get("name")  # the file is loaded lazily: fail here, not inside a job
    except OSError as e:  # a config file that is missing (errors in its code keep their traceback)
        print("error: --config: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    workdir = os.path.abspath(_WORKDIR.value)
    try:
        cfg = jobs.resolve_config(cfg)
        if _MODE.value == "plan":
            from jaxpetct.jobs import plan

            plan.use_virtual_devices(cfg)  # before anything starts a JAX backend
            print(plan.format_table(plan.plan(cfg, workdir, stages=_STAGE.value)))
            return 0
        if _STAGE.value and _MODE.value != "train":
            raise jobs.ConfigError("--stage selects stages to train: use it with --mode train")
        summary = jobs.run(_MODE.value, cfg, workdir, progress=_PROGRESS.value, stages=_STAGE.value)
    except jobs.USER_ERRORS as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    print(jobs.describe(summary, workdir))
    return 0


def _parse_flags(argv):
    """absl's parser, with a bad value (`--config.data.batch_size=abc`) as one line and exit 2 like other user errors."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except SyntaxError as e:  # the --config file does not parse: file and line are the whole story
        print(f"error: --config: {e.msg} ({e.filename}, line {e.lineno})", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
