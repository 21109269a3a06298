"""Paper stage 1: CT-ViT fine-tuned CLIP-style against PhoBERT-base on (region volume, findings) pairs.

lr 1.25e-6, batch 8, ~100k steps (paper). The VLM configs start their encoder from this stage's weights when
run in the same workdir with order ("encoder_pretrain", "align", "lora").

    JAXPETCT_SALT=... python launch.py --config configs/paper/encoder_pretrain_ctvit_phobert.py --workdir runs/ctclip \\
        --config.data.manual_dir=/data/ViMed-PET --config.model.text_encoder.hf_dir=/models/phobert-base
"""
import ml_collections

from jaxpetct.paper import paper_config, stage


def get_config(arg=None):
    c = paper_config("mistral_7b", "O")
    c.name = "paper_encoder_pretrain_ctvit_phobert"
    c.order = ("encoder_pretrain",)
    c.data.max_length = 256  # PhoBERT's 258 positions minus RoBERTa's offset of 2
    c.data.buckets = (64, 128, 256)  # the VLM rows' (512, ...) would pad every caption batch to 512 tokens
    c.data.batch_size = 8
    c.model.encoder.dtype = "float32"
    c.model.text_encoder = ml_collections.ConfigDict(dict(preset="phobert", hf_dir=""))
    c.model.clip.latent_dim = 512  # CT-CLIP's
    c.stages.encoder_pretrain = stage(100_000, peak_lr=1.25e-6, save_every=2000, log_every=50, best_metric="")
    return c
