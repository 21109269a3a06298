"""Every experiment file under configs/ loads, names valid stages, and builds (abstractly) the model it describes."""
import importlib.util
import pathlib

import jax
import pytest
from flax import nnx

from jaxpetct.jobs import training
from jaxpetct.models.factory import build_vlm, decoder_config, encoder_config
from jaxpetct.parallel.mesh import MeshConfig

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").rglob("*.py"))
DEVICES = {"tpu_v5p_64": 32, "gpu_2x8_h100_slurm": 16, "gpu_1x8_h100": 8}


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_there_are_paper_rows_pods_and_the_default():
    names = {p.stem for p in CONFIGS}
    assert {"default", "ctvit_mistral7b_o", "ctvit_mistral7b_og", "ctvit_mistral7b_ogc", "ctvit_llama2_7b_og",
            "qwen25_0_5b_og", "encoder_pretrain_ctvit_phobert", "tpu_v5p_64", "gpu_1x8_h100", "cosmos_mistral7b_og",
            "cosmos_mistral7b_ogc", "cosmos_tiny"} <= names


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.startswith("cosmos")], ids=lambda p: p.stem)
def test_cosmos_configs_fine_tune_the_tokenizer_then_train_the_vlm_on_its_tokens(path):
    cfg = load(path)
    assert cfg.order[0] == "tokenizer_finetune" and cfg.order[-2:] == ("align", "lora")
    assert training.stage_task(cfg, "tokenizer_finetune")[1] == "volume"
    assert not training.kind_of(cfg, "tokenizer_finetune").vlm and cfg.model.projector.features == "all"
    enc = encoder_config(cfg.model.encoder.to_dict())
    assert tuple(cfg.data.image.channels) == ("pet", "ct") and cfg.data.image.out_range == "unit"
    if path.stem != "cosmos_tiny":  # the paper's recipe
        s = cfg.stages.tokenizer_finetune
        assert (s.epochs, s.peak_lr, s.weight_decay, s.batch_size) == (20, 1e-4, 1e-5, 8)
        assert (s.optimizer, s.clip_norm) == ("adam", 0.0)  # torch.optim.Adam's L2 decay, as the paper's code
        assert enc.input_shape == (2, 120, 256, 256) and enc.grid == (16, 32, 32)
        assert enc.tokenizer.compute_dtype.name == "bfloat16" and cfg.model.projector.pool == 1
        assert tuple(cfg.eval.tasks) == (("report", "vqa") if path.stem.endswith("ogc") else ("report",))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_consistent(path):
    cfg = load(path)
    for name in cfg.order:
        training.kind_of(cfg, name)  # a registered stage kind (ConfigError otherwise)
    for name in cfg.order:
        spec = training.stage_spec(cfg, name, n_train=5571)  # the paper's 1,857 train studies x 3 regions
        assert spec.steps >= 1 and spec.peak_lr > 0
    enc = encoder_config(cfg.model.encoder.to_dict())
    assert len(cfg.data.image.channels) == enc.channels
    dec = decoder_config(cfg.model.decoder.to_dict())
    assert dec.vocab_size > 0
    if path.stem in DEVICES:
        assert MeshConfig.from_mapping(cfg.mesh.to_dict()).resolve(DEVICES[path.stem])


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem in ("ctvit_mistral7b_og", "ctvit_llama2_7b_og")],
                         ids=lambda p: p.stem)
def test_paper_models_have_the_paper_shapes(path):
    cfg = load(path)
    model = nnx.eval_shape(lambda: build_vlm(cfg.model.to_dict(), seed=0))  # no allocation
    assert model.num_visual_tokens == 14
    assert model.encoder.cfg.input_shape == (2, 140, 480, 480)
    assert model.projector.cfg.in_features == 24 * 24 * 512
    n_decoder = sum(x.size for x in jax.tree.leaves(nnx.state(model.decoder, nnx.Param)))
    lora = sum(x.size for x in jax.tree.leaves(nnx.state(model.decoder, nnx.LoRAParam)))
    # Mistral-7B / LLaMA-2-7B base weights (the adapters of r 64 on every linear add ~2 %)
    assert 6.7e9 < n_decoder - lora < 7.3e9 and 0.005 < lora / (n_decoder - lora) < 0.03
