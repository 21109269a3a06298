"""NVIDIA's original Cosmos tokenizer parameter names (the `autoencoder.jit` / `encoder.jit` / `decoder.jit`
TorchScript files of nvidia/Cosmos-*-Tokenizer-CV8x8x8) -> diffusers' `AutoencoderKLCosmos` names.

The original modules (cosmos_tokenizer `EncoderFactorized` / `DecoderFactorized`) wrap every conv as
`CausalConv3d.conv3d`, keep the factorised pairs as `nn.Sequential` (`.0` spatial, `.1` temporal), group levels as
`down.{i}` / `up.{i}` with `block` / `attn` / `downsample` / `upsample`, and a middle `mid.block_1 / attn_1 /
block_2`; the decoder *prepends* its levels, so `up.{i}` is diffusers' `up_blocks.{n-1-i}`. diffusers' script
(scripts/convert_cosmos_to_diffusers.py, `VAE_KEYS_RENAME_DICT`) does the same renames as ordered substring
replacements hard-wired to three levels, and drops the non-persistent Haar buffers; this module applies them as
anchored patterns, infers the level count, and also maps attention inside down/up blocks (`attn.{j}.0/1`, absent
from CV8x8x8 and not covered by the script). Tensors are passed through unchanged (same layouts on both sides).
"""
from __future__ import annotations

import re
from typing import Mapping, TypeVar

T = TypeVar("T")

# buffers of the Haar patcher (recomputed from the patch type, never learned)
DROPPED_SUFFIXES = ("wavelets", "_arange", "patch_size_buffer")

_RULES = (
    (r"^(encoder|decoder)\.down\.(\d+)\.", r"\1.down_blocks.\2."),
    (r"\.block\.(\d+)\.", r".resnets.\1."),
    (r"\.attn\.(\d+)\.0\.", r".attentions.\1."),
    (r"\.attn\.(\d+)\.1\.", r".temp_attentions.\1."),
    (r"\.mid\.block_1\.", ".mid_block.resnets.0."),
    (r"\.mid\.block_2\.", ".mid_block.resnets.1."),
    (r"\.mid\.attn_1\.0\.", ".mid_block.attentions.0."),
    (r"\.mid\.attn_1\.1\.", ".mid_block.temp_attentions.0."),
    (r"\.downsample\.", ".downsamplers.0."),
    (r"\.upsample\.", ".upsamplers.0."),
    (r"\.(q|k|v)\.conv3d\.", r".to_\1."),
    (r"\.proj_out\.conv3d\.", ".to_out.0."),
    (r"\.0\.conv3d\.", ".conv_s."),
    (r"\.1\.conv3d\.", ".conv_t."),
    (r"\bnin_shortcut\.conv3d\.", "conv_shortcut."),
    (r"\.conv3d\.", "."),
)
_UP = re.compile(r"^decoder\.up\.(\d+)\.")


def convert_key(key: str, up_levels: int) -> str:
    """One original name -> its diffusers name (`up_levels`: how many `decoder.up.{i}` levels there are)."""
    key = _UP.sub(lambda m: f"decoder.up_blocks.{up_levels - 1 - int(m.group(1))}.", key)
    for pattern, replacement in _RULES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_torchscript_state_dict(state_dict: Mapping[str, T]) -> dict[str, T]:
    """`torch.jit.load("autoencoder.jit").state_dict()` (or encoder.jit / decoder.jit) -> a diffusers-named
    state dict, ready for `AutoencoderKLCosmos.load_state_dict(strict=True)` or `cosmos.from_state_dict`.

    The config is not in the state dict: CV8x8x8 is `CosmosConfig.cv8x8x8()`; its `mean_std.pt` statistics go to
    `latents_mean` / `latents_std` (pipelines use them, the tokenizer does not).
    """
    up_levels = 1 + max((int(m.group(1)) for k in state_dict if (m := _UP.match(k))), default=-1)
    out: dict[str, T] = {}
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] in DROPPED_SUFFIXES:
            continue
        new = convert_key(key, up_levels)
        if new in out:
            raise ValueError(f"two original tensors map to {new!r} (the second is {key!r})")
        out[new] = value
    return out
