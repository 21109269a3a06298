"""Paper row: Cosmos CV8x8x8 + Mistral-7B, O+G. The tokenizer is fine-tuned on the volumes first
(tokenizer_finetune: L1 + 0.1 (1 - SSIM3D), 20 epochs, batch 8), then align and LoRA as in the CT-ViT rows.

    JAXPETCT_SALT=... python launch.py --config configs/paper/cosmos_mistral7b_og.py --workdir runs/cosmos_mistral7b_og \
        --config.data.manual_dir=/data/ViMed-PET --config.model.decoder.hf_dir=/models/<pretrained LLM> \
        --config.model.encoder.hf_dir=/models/Cosmos-1.0-Tokenizer-CV8x8x8-diffusers

model.encoder.hf_dir is a diffusers AutoencoderKLCosmos folder (or a pipeline folder with vae/); NVIDIA's
TorchScript autoencoder.jit converts to one with jaxpetct.models.cosmos (README, "Cosmos").
"""
from jaxpetct.paper import paper_config


def get_config(arg=None):
    return paper_config("mistral_7b", "OG", vision="cosmos")
