"""The stage registry: what a training stage is, in one place.

A stage kind says which model it trains (a builder from the config), with which loss and record encoding, which
parameters train (path patterns, as big_vision's `c.schedule`), and whether it adds LoRA adapters or trains the VLM
that evaluation and export use. A config stage (`c.stages.<name>`, listed in `c.order`) holds the hyperparameters
and names its kind (`kind`, default: the stage's own name); `trainable` in the config overrides the kind's groups.

Adding a stage is one `register(StageKind(...))` (here, or in a config file, which is Python) and one config entry;
README "Extending" walks through it and tests/train/test_stage_registry.py does it from a test file.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from flax import nnx

from jaxpetct.config import Stage, stage_settings
from jaxpetct.errors import ConfigError
from jaxpetct.models.factory import (build_clip, build_cosmos_autoencoder, build_lesion_mapper, build_vlm,
                                     encoder_trainable)
from jaxpetct.train.optimizer import ParamGroup
from jaxpetct.train.step import Task
from jaxpetct.train.tasks import (clip_loss, lesion_map_loss, text_only_loss, tokenizer_reconstruction_loss,
                                   vlm_answer_loss)

# (cfg, stage name, mesh or None, with LoRA adapters) -> model
Builder = Callable[[Any, str, Any, bool], nnx.Module]


@dataclasses.dataclass(frozen=True)
class StageKind:
    """One kind of stage. `loss` and `data_task` may depend on the stage's config through `variant`."""

    name: str
    build: Builder
    loss: Task
    groups: tuple[ParamGroup, ...]
    data_task: Optional[str] = None  # the record encoding its batches use (None: the config's data tasks)
    vlm: bool = True  # trains the VLM: CT-ViT under encoder/, projector, decoder; evaluation uses the last one
    adds_lora: bool = False  # LoRA adapters exist from this stage on (in later stages and at evaluation)
    trains_encoder_optionally: bool = False  # stages.<name>.encoder_lr_scale > 0 also trains CT-ViT
    variant: Optional[Callable[[Stage], "StageKind"]] = None  # picks a refinement from the stage's settings
    val_extras: tuple[str, ...] = ()  # the loss's extras that validation reports beside val_loss (val_<name>)
    eval_before: bool = False  # validate the starting weights too (the stage summary's "initial"): what it gained


STAGES: dict[str, StageKind] = {}


def register(kind: StageKind, *, replace: bool = False) -> StageKind:
    if kind.name in STAGES and not replace:
        raise ValueError(f"stage kind {kind.name!r} is registered already (pass replace=True to redefine it)")
    STAGES[kind.name] = kind
    return kind


def kind_of(cfg, name: str) -> StageKind:
    """The kind of config stage `name`: stages.<name>.kind, or the name itself; refined by the kind's variant."""
    settings = stage_settings(cfg, name)
    key = settings.kind or name
    if key not in STAGES:
        raise ConfigError(f"stages.{name}: unknown stage kind {key!r}; registered: {sorted(STAGES)} "
                          "(jaxpetct/train/stages.py: register)")
    kind = STAGES[key]
    return kind.variant(settings) if kind.variant is not None else kind


def trainable_groups(cfg, name: str) -> tuple[ParamGroup, ...]:
    """stages.<name>.trainable ((group, path regex[, lr scale]), ...) if given, else the kind's groups; plus CT-ViT
    at encoder_lr_scale when the kind allows it and the config asks."""
    s = stage_settings(cfg, name)
    kind = kind_of(cfg, name)
    # a kind's "encoder" group is the encoder's trainable weights (of Cosmos the encode half: the decode half
    # gets no gradient, and AdamW's decay would still move it)
    groups = tuple(dataclasses.replace(g, pattern=encoder_trainable(cfg.model.encoder)) if g.name == "encoder" else g
                   for g in kind.groups)
    if s.trainable:
        try:
            groups = tuple(ParamGroup(g[0], g[1], lr_scale=float(g[2]) if len(g) > 2 else 1.0) for g in s.trainable)
        except (TypeError, IndexError, ValueError):
            raise ConfigError(f"stages.{name}.trainable: give (group name, path regex[, lr scale]) tuples, "
                              f"got {s.trainable!r}") from None
    scale = s.encoder_lr_scale
    if scale > 0:
        if not kind.trains_encoder_optionally:
            raise ConfigError(f"stages.{name}.encoder_lr_scale: stage kind {kind.name!r} cannot train CT-ViT")
        groups = (*groups, ParamGroup("encoder", encoder_trainable(cfg.model.encoder), lr_scale=scale))
    return groups


def _vlm(cfg, name: str, mesh, with_lora: bool) -> nnx.Module:
    model_cfg = cfg.model.to_dict()
    if stage_settings(cfg, name).encoder_lr_scale > 0:
        model_cfg["freeze_encoder"] = False  # gradients must reach the encoder this stage trains
    return build_vlm(model_cfg, seed=int(cfg.seed), mesh=mesh, with_lora=with_lora)


def _clip(cfg, name: str, mesh, with_lora: bool) -> nnx.Module:
    return build_clip(cfg.model.to_dict(), seed=int(cfg.seed), mesh=mesh)


def _cosmos_autoencoder(cfg, name: str, mesh, with_lora: bool) -> nnx.Module:
    return build_cosmos_autoencoder(cfg.model.to_dict(), seed=int(cfg.seed), mesh=mesh)


def _lesion_mapper(cfg, name: str, mesh, with_lora: bool) -> nnx.Module:
    return build_lesion_mapper(cfg.model.to_dict(), seed=int(cfg.seed), mesh=mesh,
                               pos_weight=stage_settings(cfg, name).pos_weight)


# CT-ViT pre-training. VolumeTextCLIP: encoder/..., text/..., latent heads and the loss temperature;
# LesionMapper: encoder/, head/. "objective" picks the paper's CLIP against report text or per-token lesion-centre maps.
_ENCODER_GROUPS = (
    ParamGroup("encoder", r"^encoder/"),
    ParamGroup("text", r"^text/"),
    ParamGroup("heads", r"^(to_vision_latent|to_text_latent|log_scale|logit_bias|head)(/|$)", weight_decay=False),
)
_ENCODER_OBJECTIVES = {
    "clip": StageKind("encoder_pretrain", _clip, clip_loss, _ENCODER_GROUPS, data_task="clip", vlm=False),
    "lesion_map": StageKind("encoder_pretrain", _lesion_mapper, lesion_map_loss, _ENCODER_GROUPS,
                            data_task="lesion_map", vlm=False),
}


def _encoder_objective(settings: Stage) -> StageKind:
    objective = settings.objective
    if objective not in _ENCODER_OBJECTIVES:
        raise ConfigError(f"stages.encoder_pretrain.objective={objective!r}; use one of {sorted(_ENCODER_OBJECTIVES)}")
    return _ENCODER_OBJECTIVES[objective]


register(dataclasses.replace(_ENCODER_OBJECTIVES["clip"], variant=_encoder_objective))
# Stand-in for the pretrained LLM a real run loads (model.decoder.hf_dir): a random decoder first learns the report
# language on its own (text-only loss: the volumes are blanked), all weights trained.
register(StageKind("lm_pretrain", _vlm, text_only_loss, (ParamGroup("decoder", r"^decoder/"),)))
# The paper's stage 2: the projector alone learns to map CT-ViT tokens into the decoder's embedding space.
register(StageKind("align", _vlm, vlm_answer_loss, (ParamGroup("projector", r"^projector/"),),
                   trains_encoder_optionally=True))
# The paper's stage 3: LoRA adapters on every linear of the decoder, and the projector.
register(StageKind("lora", _vlm, vlm_answer_loss,
                   (ParamGroup("lora", r"/lora_(a|b)(/|$)"), ParamGroup("projector", r"^projector/")),
                   adds_lora=True, trains_encoder_optionally=True))
# Projector and every decoder weight (the tiny default's stand-in for LLaVA-Med, which already reads images).
register(StageKind("full", _vlm, vlm_answer_loss,
                   (ParamGroup("projector", r"^projector/"), ParamGroup("decoder", r"^decoder/")),
                   trains_encoder_optionally=True))
# The paper's Cosmos rows: the whole Cosmos autoencoder (the VLM's encoder, `encoder/tokenizer/`) fine-tuned on the
# PET/CT volumes with L1 + 0.1 (1 - SSIM3D) before the VLM stages, which take it frozen. Validation reports PSNR and
# SSIM of the reconstructed volumes, before and after.
register(StageKind("tokenizer_finetune", _cosmos_autoencoder, tokenizer_reconstruction_loss,
                   (ParamGroup("tokenizer", r"^encoder/tokenizer/"),), data_task="volume", vlm=False,
                   val_extras=("psnr", "ssim"), eval_before=True))
