"""A tiny synthetic cohort and its regions dataset, built once per test session for the training tests."""
import os
import pathlib

import pytest

from jaxpetct.config import base_config


def tiny_config(workdir: pathlib.Path, shared: pathlib.Path):
    """The default, shrunk: 16x32x32 volumes, 4 visual tokens, LoRA rank 4, short stages."""
    cfg = base_config()
    cfg.data.manual_dir = str(shared / "cohort")
    cfg.data.data_dir = str(shared / "tfds")
    cfg.data.synthetic.n = 12
    cfg.data.synthetic.size = "tiny"
    cfg.data.batch_size = 4
    cfg.data.val_batch_size = 4
    cfg.model.encoder = dict(preset="tiny", channels=2, patch_input_norm=False, lesion_channel=True)
    cfg.model.projector.pool = 4  # the whole 4 x 4 slab grid, as the default's 8 on its 8 x 8
    cfg.model.lora.rank = 4
    cfg.model.lora.alpha = 8.0
    for name in cfg.order:
        cfg.stages[name].steps = 6
        cfg.stages[name].save_every = 3
        cfg.stages[name].log_every = 1
    cfg.eval.max_examples = 4
    cfg.eval.max_new_tokens = 24
    return cfg


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """(shared dir, config factory): cohort + regions dataset written once."""
    from jaxpetct.jobs import data as data_jobs

    shared = tmp_path_factory.mktemp("train_data")
    cfg = tiny_config(shared / "unused", shared)
    data_jobs.synth(cfg, str(shared))
    data_jobs.build(cfg, str(shared), progress=False)
    return shared, (lambda workdir: tiny_config(pathlib.Path(workdir), shared))


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory):
    """Environment for launch.py subprocesses: CPU, a shared compilation cache, the repo importable."""
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(repo), JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)
    return env
