"""`CosmosConfig`: diffusers' `AutoencoderKLCosmos` config fields, plus the shape arithmetic of the causal tokenizer.

The fields and their meaning are diffusers' (so a `config.json` maps one to one, both ways); the defaults are the
CV8x8x8 tokenizer's. Which blocks attend, downsample or upsample is derived here, in one place, by diffusers' rules,
so the modules only read a plan, and `latent_shape` / `decoded_shape` answer "how many tokens" without building
or running anything.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from jaxpetct.errors import ConfigError
from jaxpetct.models.decoder_config import Precision

PATCH_TYPES = ("haar", "rearrange")
DIFFUSERS_CLASS = "AutoencoderKLCosmos"
# runtime fields of ours that are not part of a diffusers config.json
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat")


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """One encoder down block or decoder up block: channels, resnets, attention, and its resampling."""

    in_channels: int
    out_channels: int
    num_resnets: int
    attention: bool
    resample: bool  # diffusers builds a (possibly parameter-free) down/upsampler
    spatial: bool
    temporal: bool


@dataclasses.dataclass(frozen=True)
class CosmosConfig(Precision):
    """diffusers `AutoencoderKLCosmos` fields (CV8x8x8 defaults) plus our runtime fields (dtype, param_dtype, remat).

    `latents_mean` / `latents_std` are checkpoint statistics that diffusers pipelines use around the diffusion
    model; the tokenizer itself never reads them. They travel through config.json unchanged (None when absent).
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    decode_block_out_channels: tuple[int, ...] = (256, 512, 512, 512)
    attention_resolutions: tuple[int, ...] = (32,)
    resolution: int = 1024
    num_layers: int = 2
    patch_size: int = 4
    patch_type: str = "haar"
    scaling_factor: float = 1.0
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 8
    latents_mean: Optional[tuple[float, ...]] = None
    latents_std: Optional[tuple[float, ...]] = None
    dtype: Any = "float32"  # compute dtype; bfloat16 for training
    param_dtype: Any = "float32"  # storage dtype of the weights
    remat: bool = False  # recompute each down/mid/up block in the backward pass

    def __post_init__(self):
        for name in ("encoder_block_out_channels", "decode_block_out_channels", "attention_resolutions",
                     "latents_mean", "latents_std"):
            value = getattr(self, name)
            if value is not None:  # JSON lists -> tuples: the config is a static, hashable part of the module
                object.__setattr__(self, name, tuple(value))
        if self.patch_type not in PATCH_TYPES:
            raise ConfigError(f"Cosmos patch_type={self.patch_type!r}: expected one of {PATCH_TYPES}")
        for name in ("patch_size", "spatial_compression_ratio", "temporal_compression_ratio"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ConfigError(f"Cosmos {name}={value} must be a power of two")
        if min(self.spatial_compression_ratio, self.temporal_compression_ratio) < self.patch_size:
            raise ConfigError(f"Cosmos compression ratios must be >= patch_size={self.patch_size}")
        if min(len(self.encoder_block_out_channels), len(self.decode_block_out_channels)) < 2:
            raise ConfigError("Cosmos needs at least two encoder and two decoder block widths")

    @classmethod
    def cv8x8x8(cls, **overrides) -> "CosmosConfig":
        """nvidia/Cosmos-1.0-Tokenizer-CV8x8x8 (and 0.1): 8x temporal, 8x8 spatial, 16 latent channels."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> "CosmosConfig":
        """The CV8x8x8 layout at toy widths (attention only in the mid blocks, as CV8x8x8; `resolution` 64 puts
        the first down and last up block at 16, so attention_resolutions=(16,) adds attention there)."""
        base = dict(latent_channels=4, encoder_block_out_channels=(8, 16, 16, 16),
                    decode_block_out_channels=(16, 16, 16, 16), attention_resolutions=(), resolution=64,
                    num_layers=1)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_diffusers(cls, config: dict, **runtime) -> "CosmosConfig":
        """From a diffusers config.json dict; keys starting with '_' (class name, version) are bookkeeping."""
        fields = {f.name for f in dataclasses.fields(cls)} - set(RUNTIME_FIELDS)
        unknown = sorted(k for k in config if not k.startswith("_") and k not in fields)
        if unknown:
            raise ConfigError(f"Cosmos config keys this port does not know: {unknown}")
        name = config.get("_class_name", DIFFUSERS_CLASS)
        if name != DIFFUSERS_CLASS:
            raise ConfigError(f"config _class_name={name!r}, expected {DIFFUSERS_CLASS!r}")
        return cls(**{k: v for k, v in config.items() if k in fields}, **runtime)

    def to_diffusers(self) -> dict:
        """The config.json diffusers' `AutoencoderKLCosmos.from_pretrained` reads."""
        out: dict[str, Any] = {"_class_name": DIFFUSERS_CLASS, "_diffusers_version": "0.35.0"}
        for f in dataclasses.fields(self):
            if f.name in RUNTIME_FIELDS:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes) -> "CosmosConfig":
        return dataclasses.replace(self, **changes)

    @property
    def patch_levels(self) -> int:
        return int(math.log2(self.patch_size))

    @property
    def num_spatial_layers(self) -> int:
        return int(math.log2(self.spatial_compression_ratio)) - self.patch_levels

    @property
    def num_temporal_layers(self) -> int:
        return int(math.log2(self.temporal_compression_ratio)) - self.patch_levels

    def encoder_plan(self) -> tuple[BlockPlan, ...]:
        """diffusers' CosmosEncoder3d rules: block i attends at its resolution, and (all but the last) downsample
        space while i < num_spatial_layers and time while i < num_temporal_layers."""
        widths, plans = self.encoder_block_out_channels, []
        resolution = self.resolution // self.patch_size
        for i in range(len(widths) - 1):
            resample = i < len(widths) - 2
            plans.append(BlockPlan(widths[i], widths[i + 1], self.num_layers, resolution in self.attention_resolutions,
                                   resample, resample and i < self.num_spatial_layers,
                                   resample and i < self.num_temporal_layers))
            resolution //= 2 if resample else 1
        return tuple(plans)

    def decoder_plan(self) -> tuple[BlockPlan, ...]:
        """diffusers' CosmosDecoder3d rules: time is upsampled by blocks 1..num_temporal_layers (block 0 never),
        space with it, or from block 0 when the tokenizer compresses space more than time."""
        widths = tuple(reversed(self.decode_block_out_channels))
        resolution = (self.resolution // self.patch_size) // 2 ** (len(widths) - 2)
        n_s, n_t, plans = self.num_spatial_layers, self.num_temporal_layers, []
        for i in range(len(widths) - 1):
            resample = i < len(widths) - 2
            temporal = resample and 0 < i < n_t + 1
            spatial = resample and (temporal or (i < n_s and n_s > n_t))
            plans.append(BlockPlan(widths[i], widths[i + 1], self.num_layers + 1,
                                   resolution in self.attention_resolutions, resample, spatial, temporal))
            resolution *= 2 if resample else 1
        return tuple(plans)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(T', H', W', latent_channels) that `encode` returns for a (frames, height, width) input; raises the
        ValueError diffusers would fail with (in torch, as a shape mismatch) for sizes the layers cannot take."""
        t = frames + self.patch_size - 1  # the first frame is repeated to fill a whole first patch
        h, w = height, width
        if self.patch_type == "rearrange":
            for name, n in (("frames + patch_size - 1", t), ("height", h), ("width", w)):
                if n % self.patch_size:
                    raise ValueError(f"rearrange patching needs {name}={n} divisible by {self.patch_size}")
            t, h, w = t // self.patch_size, h // self.patch_size, w // self.patch_size
        else:
            for _ in range(self.patch_levels):
                if min(h, w) < 2:
                    raise ValueError(f"height and width {height}x{width} are too small for {self.patch_size}x Haar")
                t, h, w = -(-t // 2), -(-h // 2), -(-w // 2)  # odd lengths are reflect-padded: ceil
        for plan in self.encoder_plan():
            if plan.spatial:
                if h % 2 or w % 2:
                    raise ValueError(f"height x width {height}x{width}: a spatial downsample meets an odd size "
                                     f"{h}x{w}; use multiples of {self.spatial_compression_ratio}")
                h, w = h // 2, w // 2
            if plan.temporal:
                t = (t - 1) // 2 + 1
        return t, h, w, self.latent_channels

    def decoded_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(T, H, W, out_channels) that `decode` returns for a latent of (frames, height, width)."""
        t, h, w = frames, height, width
        for plan in self.decoder_plan():
            if plan.temporal and t > 1:
                t = 2 * t - 1
            if plan.spatial:
                h, w = 2 * h, 2 * w
        p = self.patch_size
        return t * p - (p - 1), h * p, w * p, self.out_channels
