"""Models from configuration: the one place that turns a config's `model` section into NNX modules.

Configs are plain mappings (config-as-code files under configs/ produce ml_collections ConfigDicts); this module
turns them into the frozen dataclass configs of each part and builds the modules, placing every parameter
directly in its shard when a mesh is given (a 7B decoder is never materialised whole on one device). It adds no
default of its own: a key the mapping leaves out takes the model's own default (an experiment config always gives
every key: jaxpetct/config.py is the home of its defaults), and a key no model takes is a ConfigError.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpetct.errors import ConfigError

from jaxpetct.models import decoder_config as decoder_configs
from jaxpetct.models.contrastive import VolumeTextCLIP
from jaxpetct.models.cosmos import vision as cosmos_vision
from jaxpetct.models.cosmos.io import load_diffusers
from jaxpetct.models.ctvit import CTViT, CTViTConfig
from jaxpetct.models.decoder import Decoder
from jaxpetct.models.hf_io import load_decoder
from jaxpetct.models.lora import LoRAConfig, apply_lora
from jaxpetct.models.lesion_map import LesionMapper
from jaxpetct.models.projector import Projector, ProjectorConfig
from jaxpetct.models.text_encoder import RobertaConfig, RobertaEncoder, load_roberta
from jaxpetct.models.vlm import VLM
from jaxpetct.parallel.rules import init_options, init_sharded, place_state

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: Any) -> Any:
    if not isinstance(name, str):
        return name
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _plain(m: Optional[Mapping]) -> dict:
    if m is None:
        return {}
    return {k: (_plain(v) if isinstance(v, Mapping) else v) for k, v in dict(m).items()}


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


# What each section of `model` may name: its model's config fields (+ preset / weights folder). The encoder is
# CT-ViT (presets tiny, paper) or Cosmos (cosmos_*: models/cosmos/vision.py); `section` checks the keys of the
# preset's own model.
_RUNTIME = ("dtype", "param_dtype", "remat", "remat_policy", "scan_layers", "attention_impl")
_CTVIT_KEYS = lambda: {"preset"} | _fields(CTViTConfig)  # noqa: E731
SECTIONS = {
    "encoder": lambda: _CTVIT_KEYS() | cosmos_vision.config_keys(),
    "decoder": lambda: {"preset", "hf_dir"} | _fields(decoder_configs.DecoderConfig),
    "text_encoder": lambda: {"preset", "hf_dir"} | _fields(RobertaConfig),
    "projector": lambda: _fields(ProjectorConfig) - {"grid", "vision_dim", "d_model"},
    "lora": lambda: _fields(LoRAConfig),
    "clip": lambda: {"latent_dim", "vision_pool", "text_pool", "loss"},
}
_VLM_FLAGS = ("prefix_lm", "freeze_encoder", "loss_chunk")


def section(model_cfg: Optional[Mapping], name: str) -> dict:
    """`model.<name>` as a plain dict; a key its model does not take is a ConfigError naming it."""
    cfg = _plain((model_cfg or {}).get(name))
    allowed = SECTIONS[name]()
    if name == "encoder":
        allowed = cosmos_vision.config_keys() if is_cosmos(cfg) else _CTVIT_KEYS()
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"model.{name}.{unknown[0]}: no such setting (settings: {', '.join(sorted(allowed))})")
    return cfg


def check(model_cfg: Mapping) -> None:
    """Every key of a `model` section is one the factory reads (ConfigError otherwise)."""
    unknown = sorted(set(_plain(model_cfg)) - set(SECTIONS) - set(_VLM_FLAGS))
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: no such setting")
    for name in SECTIONS:
        section(model_cfg, name)


def is_cosmos(encoder_cfg: Optional[Mapping]) -> bool:
    """Whether a `model.encoder` section names a Cosmos preset."""
    return str(_plain(encoder_cfg).get("preset", "")).startswith("cosmos")


def encoder_config(cfg: Mapping) -> Union[CTViTConfig, cosmos_vision.CosmosVisionConfig]:
    """`{"preset": "tiny"|"paper", "channels": 2, **overrides}` -> CTViTConfig; a Cosmos preset
    (`{"preset": "cosmos_cv8x8x8", "hf_dir": ..., "depth": 120, ...}`) -> CosmosVisionConfig (`hf_dir`, the
    weights, is `build_encoder`'s)."""
    cfg = section({"encoder": cfg}, "encoder")
    preset = cfg.pop("preset", "tiny")
    for k in ("dtype", "param_dtype"):
        if k in cfg:
            cfg[k] = dtype_of(cfg[k])
    if is_cosmos({"preset": preset}):
        cfg.pop("hf_dir", None)
        return cosmos_vision.vision_config(preset, **cfg)
    if preset == "tiny":
        return CTViTConfig.tiny(**cfg)
    if preset == "paper":
        return CTViTConfig.paper(**cfg)
    raise ValueError(f"unknown CT-ViT preset {preset!r}; use 'tiny' or 'paper' (or a Cosmos preset: "
                     f"{sorted(cosmos_vision.PRESETS)})")


def encoder_trainable(encoder_cfg: Optional[Mapping]) -> str:
    """The path regex of the encoder weights a VLM stage trains with encoder_lr_scale > 0: all of CT-ViT; of
    Cosmos only the encode half (its decode half gets no gradient in the VLM, and AdamW's decay would still move it)."""
    return r"^encoder/(tokenizer/(encoder|quant_conv)|lesion_head)/" if is_cosmos(encoder_cfg) else r"^encoder/"


def _ctvit_only(model_cfg: Mapping, what: str) -> CTViTConfig:
    enc_cfg = encoder_config(model_cfg.get("encoder"))
    if not isinstance(enc_cfg, CTViTConfig):
        raise ConfigError(f"{what} trains CT-ViT, but model.encoder is Cosmos: fine-tune Cosmos with the "
                          "tokenizer_finetune stage instead")
    return enc_cfg


def build_encoder(enc_cfg, rngs: nnx.Rngs) -> nnx.Module:
    """CT-ViT, randomly initialised, or the Cosmos vision encoder with zero weights (`encoder_weights` fills them:
    models/cosmos/vision.py, random_weights, says why)."""
    if isinstance(enc_cfg, cosmos_vision.CosmosVisionConfig):
        return cosmos_vision.CosmosVisionEncoder(enc_cfg, rngs=rngs,
                                                 tokenizer=cosmos_vision.zero_tokenizer(enc_cfg.tokenizer))
    return CTViT(enc_cfg, rngs=rngs)


def encoder_weights(model: nnx.Module, model_cfg: Mapping, *, seed: int, mesh=None) -> nnx.Module:
    """A Cosmos `model.encoder`'s weights: `model.encoder.hf_dir`'s (a diffusers AutoencoderKLCosmos folder, whose
    config.json must describe the preset's architecture: the plan and the checkpoints are shaped by the preset),
    or random ones from `seed`. CT-ViT is initialised where it is built."""
    if not isinstance(model.encoder, cosmos_vision.CosmosVisionEncoder):
        return model
    section_cfg = section(model_cfg, "encoder")
    if not section_cfg.get("hf_dir"):
        cosmos_vision.random_weights(model.encoder.tokenizer, seed)
        return model
    ours = model.encoder.cfg.tokenizer
    loaded = load_diffusers(section_cfg["hf_dir"], mesh=mesh, dtype=ours.dtype, param_dtype=ours.param_dtype,
                            remat=ours.remat)
    differ = cosmos_vision.architecture_difference(loaded.cfg, ours)
    if differ:
        raise ConfigError(f"model.encoder.hf_dir: its config.json differs from preset {section_cfg['preset']!r} in "
                          f"{differ[0]} ({getattr(loaded.cfg, differ[0])!r} vs {getattr(ours, differ[0])!r})")
    nnx.update(model.encoder.tokenizer, nnx.state(loaded))
    return model


def decoder_config(cfg: Mapping) -> decoder_configs.DecoderConfig:
    """`{"preset": "tiny"|"mistral_7b"|..., **overrides}`; `hf_dir` (weights) is handled by `build_decoder`."""
    cfg = section({"decoder": cfg}, "decoder")
    cfg.pop("hf_dir", None)
    preset = cfg.pop("preset", "tiny")
    return decoder_configs.preset(preset, **cfg)


def lora_config(cfg: Optional[Mapping]) -> Optional[LoRAConfig]:
    cfg = section({"lora": cfg}, "lora")
    if "rank" not in cfg or int(cfg["rank"]) <= 0:  # no section, or rank 0: no adapters
        return None
    if "targets" in cfg:
        cfg["targets"] = tuple(cfg["targets"])
    return LoRAConfig(**cfg)


def build_decoder(cfg: Mapping, *, seed: int, mesh=None) -> Decoder:
    """Random init from a preset, or pretrained weights from `hf_dir` (HF safetensors), sharded over `mesh`."""
    cfg = _plain(cfg)
    hf_dir = cfg.get("hf_dir")
    if hf_dir:
        runtime = {k: cfg[k] for k in _RUNTIME if k in cfg}
        return load_decoder(hf_dir, mesh=mesh, **runtime)
    dcfg = decoder_config(cfg)
    make = lambda: Decoder(dcfg, rngs=nnx.Rngs(seed))  # noqa: E731
    return init_sharded(make, mesh) if mesh is not None else make()


def _created(make, mesh=None):
    """A module built by `make` (which creates its own Rngs) in one compiled program, every parameter made in its
    shard. Eager NNX init compiles one small XLA program per parameter shape: ~5 s for the tiny CT-ViT alone, paid
    again by every stage, evaluation and export of a run."""
    if mesh is not None:
        return init_sharded(make, mesh)
    graphdef, _ = nnx.split(nnx.eval_shape(make))
    init = jax.jit(lambda: nnx.state(make()), compiler_options=init_options())
    return nnx.merge(graphdef, init())  # also inside a trace (plan's eval_shape)


def _vlm_parts(model_cfg: dict, decoder: Decoder, seed: int, lora: Optional[LoRAConfig]) -> VLM:
    enc_cfg = encoder_config(model_cfg.get("encoder"))
    proj = section(model_cfg, "projector")
    for k in ("dtype", "param_dtype"):
        if k in proj:
            proj[k] = dtype_of(proj[k])
    pcfg = ProjectorConfig.for_encoder(enc_cfg, decoder.cfg.hidden_size, **proj)
    rngs = nnx.Rngs(seed, dropout=seed + 2)
    encoder = build_encoder(enc_cfg, rngs)
    projector = Projector(pcfg, rngs=rngs)
    model = VLM(encoder, projector, decoder, **{k: model_cfg[k] for k in _VLM_FLAGS if k in model_cfg})
    if lora is not None:
        apply_lora(model.decoder, lora, nnx.Rngs(params=seed + 3, dropout=seed + 4))
    return model


def build_vlm(model_cfg: Mapping, *, seed: int = 0, mesh=None, with_lora: bool = True) -> VLM:
    """Encoder (CT-ViT or Cosmos) -> projector -> decoder (+ LoRA adapters when the config asks and `with_lora`)."""
    model_cfg = _plain(model_cfg)
    check(model_cfg)
    lora = lora_config(model_cfg.get("lora")) if with_lora else None
    if not section(model_cfg, "decoder").get("hf_dir"):  # all random: one init program
        dcfg = decoder_config(model_cfg.get("decoder"))
        model = _created(lambda: _vlm_parts(model_cfg, Decoder(dcfg, rngs=nnx.Rngs(seed + 1)), seed, lora), mesh)
        return encoder_weights(model, model_cfg, seed=seed, mesh=mesh)
    model = _vlm_parts(model_cfg, build_decoder(model_cfg.get("decoder"), seed=seed + 1, mesh=mesh), seed, lora)
    if mesh is not None:
        nnx.update(model, place_state(nnx.state(model), mesh))
    return encoder_weights(model, model_cfg, seed=seed, mesh=mesh)


def build_cosmos_autoencoder(model_cfg: Mapping, *, seed: int = 0, mesh=None) -> cosmos_vision.CosmosAutoencoder:
    """The tokenizer_finetune model: the VLM's Cosmos encoder (whole tokenizer; `hf_dir`'s weights if given)."""
    model_cfg = _plain(model_cfg)
    enc_cfg = encoder_config(model_cfg.get("encoder"))
    if not isinstance(enc_cfg, cosmos_vision.CosmosVisionConfig):
        raise ConfigError("stage kind tokenizer_finetune fine-tunes a Cosmos encoder: set model.encoder.preset to "
                          f"one of {sorted(cosmos_vision.PRESETS)}")
    model = _created(lambda: cosmos_vision.CosmosAutoencoder(build_encoder(enc_cfg, nnx.Rngs(seed))), mesh)
    return encoder_weights(model, model_cfg, seed=seed, mesh=mesh)


def build_lesion_mapper(model_cfg: Mapping, *, pos_weight: float, seed: int = 0, mesh=None) -> LesionMapper:
    """The lesion-map encoder pre-training model: CT-ViT (or Cosmos) + a per-token lesion-centre head."""
    model_cfg = _plain(model_cfg)
    enc_cfg = encoder_config(model_cfg.get("encoder"))

    def make():
        rngs = nnx.Rngs(seed)
        return LesionMapper(build_encoder(enc_cfg, rngs), pos_weight=pos_weight, rngs=rngs)

    return encoder_weights(_created(make, mesh), model_cfg, seed=seed, mesh=mesh)


def build_clip(model_cfg: Mapping, *, seed: int = 0, mesh=None) -> VolumeTextCLIP:
    """The encoder pre-training model: CT-ViT + RoBERTa text tower (random or `text_encoder.hf_dir`)."""
    model_cfg = _plain(model_cfg)
    enc_cfg = _ctvit_only(model_cfg, "encoder_pretrain (clip)")
    text = section(model_cfg, "text_encoder")
    clip = section(model_cfg, "clip")
    if text.get("hf_dir"):
        rngs = nnx.Rngs(seed)
        model = VolumeTextCLIP(CTViT(enc_cfg, rngs=rngs), load_roberta(text["hf_dir"]), **clip, rngs=rngs)
        if mesh is not None:
            nnx.update(model, place_state(nnx.state(model), mesh))
        return model
    preset = text.pop("preset", "tiny")
    text.pop("hf_dir", None)
    rcfg = RobertaConfig.tiny(**text) if preset == "tiny" else RobertaConfig.phobert_base(**text)

    def make():
        rngs = nnx.Rngs(seed)
        text_model = RobertaEncoder(rcfg, rngs=rngs)  # first: the order of draws from rngs fixes the weights
        return VolumeTextCLIP(CTViT(enc_cfg, rngs=rngs), text_model, **clip, rngs=rngs)

    return _created(make, mesh)
