"""Tiny random diffusers AutoencoderKLCosmos models, the references the Cosmos tokenizer tests compare against.

Nothing is downloaded: each model is diffusers' own random init at a fixed torch seed, with the GroupNorm scales
and shifts perturbed too (they start at exactly 1 and 0, which would hide a mis-mapped norm), written with
`save_pretrained` where a test needs a folder.
"""
from __future__ import annotations

import numpy as np
from flax import nnx

from jaxpetct.models import cosmos


def random_vae(cfg: cosmos.CosmosConfig, seed: int):
    import diffusers
    import torch

    torch.manual_seed(seed)
    kwargs = {k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")}
    vae = diffusers.AutoencoderKLCosmos(**kwargs).eval()
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if ".norm." in name:
                param.copy_(torch.randn_like(param) * 0.1 + float(name.endswith("weight")))
    return vae


def torch_encode(vae, x: np.ndarray) -> np.ndarray:
    """diffusers' `encode(x).latent_dist.mode()` of a channels-last video, returned channels-last."""
    import torch

    with torch.no_grad():
        z = vae.encode(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).latent_dist.mode()
    return z.permute(0, 2, 3, 4, 1).numpy()


def torch_decode(vae, z: np.ndarray) -> np.ndarray:
    """diffusers' `decode(z).sample` of a channels-last latent, returned channels-last."""
    import torch

    with torch.no_grad():
        return vae.decode(torch.from_numpy(z).permute(0, 4, 1, 2, 3)).sample.permute(0, 2, 3, 4, 1).numpy()


def rel(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    return float(np.abs(np.asarray(ours, np.float32) - ref).max() / np.abs(ref).max())


def params(model) -> dict:
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def video(shape, seed) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def saved_tiny(folder, seed: int = 0):
    """(diffusers model, our model loaded from its `save_pretrained` folder, the folder) for `CosmosConfig.tiny()`:
    CV8x8x8's layout at toy widths, attention in the mid blocks only, as in CV8x8x8."""
    vae = random_vae(cosmos.CosmosConfig.tiny(), seed=seed)
    vae.save_pretrained(folder)
    return vae, cosmos.load_diffusers(folder), folder
