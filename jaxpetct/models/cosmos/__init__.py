"""NVIDIA's Cosmos continuous causal video tokenizer (CV8x8x8, as diffusers' `AutoencoderKLCosmos`) in Flax NNX.

    from jaxpetct.models import cosmos
    m = cosmos.load_diffusers("Cosmos-1.0-Tokenizer-CV8x8x8")  # a diffusers folder, or a pipeline with vae/
    z = m.encode(x)        # x (B, T, H, W, 3) in [-1, 1] -> z (B, T', H', W', 16)
    y = m.decode(z)        # -> (B, T, H, W, 3)
    cosmos.save_diffusers(m, "out")  # AutoencoderKLCosmos.from_pretrained("out") reads it

Everything is channels-last; results equal diffusers' `vae.encode(x).latent_dist.mode()` and
`vae.decode(z).sample` with channels moved last (tests/models/test_cosmos.py). Parameters carry logical axis
names (conv taps 'conv', input channels 'channels', output channels 'vis_embed', norms 'norm'), so the one rules
table shards the tokenizer like CT-ViT; `dtype` / `param_dtype` select bfloat16 for training. The original
TorchScript checkpoints (autoencoder.jit) load through `convert_torchscript_state_dict` + `from_state_dict`.

PET/CT: the tokenizer takes 3 channels; `petct_to_rgb` maps our (pet, ct) volumes in [0, 1] to (pet, ct, pet)
in [-1, 1] (both modalities kept, the pretrained 3-channel input layer used as is; see its docstring), with
slices as frames, and `rgb_to_petct` maps reconstructions back. Shapes: the causal tokenizer maps 1 + 8k slices to
1 + k latent frames and back exactly, H and W must be multiples of 8. A 120 x 256 x 256 volume gives a
(16, 32, 32) grid of 16 channels = 16,384 tokens (`latent_tokens`; T' = 16, not 15, and decode returns 121
slices: see its docstring); `causal_frames(120) = 121` is the slice count to pad to for an exact round trip.

In the VLM: `CosmosVisionEncoder` (vision.py) is the second vision encoder beside CT-ViT (`model.encoder.preset`
'cosmos_cv8x8x8' or 'cosmos_tiny', weights from a diffusers folder in `hf_dir`), and `CosmosAutoencoder` the
model of the `tokenizer_finetune` stage (L1 + 0.1 (1 - SSIM3D) on the PET/CT volumes).
"""
from jaxpetct.models.cosmos.config import BlockPlan, CosmosConfig
from jaxpetct.models.cosmos.io import (diffusers_name, diffusers_state, from_state_dict, load_diffusers,
                                       model_directory, save_diffusers)
from jaxpetct.models.cosmos.layers import haar_dwt, haar_idwt, patchify, unpatchify
from jaxpetct.models.cosmos.model import CosmosTokenizer
from jaxpetct.models.cosmos.petct import causal_frames, latent_tokens, petct_to_rgb, rgb_to_petct
from jaxpetct.models.cosmos.torchscript import convert_torchscript_state_dict
from jaxpetct.models.cosmos.vision import CosmosAutoencoder, CosmosVisionConfig, CosmosVisionEncoder

__all__ = ["BlockPlan", "CosmosAutoencoder", "CosmosConfig", "CosmosTokenizer", "CosmosVisionConfig",
           "CosmosVisionEncoder", "causal_frames", "convert_torchscript_state_dict",
           "diffusers_name", "diffusers_state", "from_state_dict", "haar_dwt", "haar_idwt", "latent_tokens",
           "load_diffusers", "model_directory", "patchify", "petct_to_rgb", "rgb_to_petct", "save_diffusers",
           "unpatchify"]
