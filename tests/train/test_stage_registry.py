"""A new stage is one registry entry and one config entry (README, "Extending"): registered here, from a test file,
then trained by the unchanged `train()` like any built-in stage."""
import pytest

from jaxpetct.config import stage
from jaxpetct.errors import ConfigError
from jaxpetct.jobs import training
from jaxpetct.train import stages
from jaxpetct.train.optimizer import ParamGroup
from jaxpetct.train.tasks import vlm_answer_loss
from tests.train.test_stages import changed, flat, one_device, trained

# The toy kind: the VLM with only the projector's biases trained (a bias-only warm-up before `align`).
BIAS_TUNE = stages.StageKind("bias_tune", stages.STAGES["align"].build, vlm_answer_loss,
                             (ParamGroup("projector_bias", r"^projector/.*/bias(/|$)"),))


@pytest.fixture()
def registered():
    stages.register(BIAS_TUNE, replace=True)
    yield BIAS_TUNE
    stages.STAGES.pop(BIAS_TUNE.name, None)


def test_a_stage_registered_from_a_test_file_trains_only_its_groups(built, tmp_path, registered):
    _, make_cfg = built
    cfg = make_cfg(tmp_path)
    cfg.stages.bias_tune = stage(3, peak_lr=1e-2, log_every=1, save_every=3)  # the one config entry
    cfg.order = ("bias_tune", "align")
    mesh = one_device()
    start = flat(training.build_stage_model(cfg, "bias_tune", mesh=mesh))
    summary = training.train(cfg, str(tmp_path), mesh=mesh, stages=["bias_tune"], progress=False)
    assert summary["bias_tune"]["steps"] == 3
    moved = changed(start, trained(cfg, tmp_path, "bias_tune"))
    assert moved == {k for k in start if k.startswith("projector/") and k.endswith("bias")}, sorted(moved)
    assert training.vlm_stages(cfg) == ["bias_tune", "align"] and not training.uses_lora(cfg, "bias_tune")


def test_the_config_names_a_kind_and_overrides_its_trainable_groups(built, tmp_path):
    _, make_cfg = built
    cfg = make_cfg(tmp_path)
    cfg.stages.align2 = stage(2, peak_lr=1e-2, kind="align", trainable=(("fc1", r"^projector/fc1/", 0.5),))
    assert training.kind_of(cfg, "align2").name == "align"
    assert training.trainable_groups(cfg, "align2") == (ParamGroup("fc1", r"^projector/fc1/", lr_scale=0.5),)
    cfg.stages.align2.encoder_lr_scale = 0.1  # the align kind may also train CT-ViT
    assert training.trainable_groups(cfg, "align2")[-1] == ParamGroup("encoder", r"^encoder/", lr_scale=0.1)
    cfg.stages.typo = stage(1, peak_lr=1e-3, kind="alig")
    with pytest.raises(ConfigError, match="unknown stage kind 'alig'"):
        training.kind_of(cfg, "typo")
    cfg.order = ("align", "missing")
    with pytest.raises(ConfigError, match="no config entry stages.missing"):
        training.train(cfg, str(tmp_path), mesh=one_device(), progress=False)
