"""Cosmos in place of CT-ViT, on the synthetic cohort, on a CPU in minutes: the Cosmos rows' path end to end.

A random Cosmos tokenizer at toy widths (`cosmos_tiny`: CV8x8x8's layout, 8-16 channels, 4 latent channels) reads
the default's 32 x 64 x 64 region volumes as 33 frames (the last slice repeated) -> 5 latent frames of 8 x 8 x 4:
5 visual tokens, each projected whole (pool 1), as in the paper's Cosmos rows. The order mirrors the default's
stand-ins: tokenizer_finetune (the paper's Cosmos stage 1, L1 + 0.1 (1 - SSIM3D); here from random weights, where
the paper starts from NVIDIA's) -> full (the stand-in for LLaVA-Med) -> align -> lora; evaluation also scores the
model on blank volumes. Fewer studies and steps than the default, so the whole run takes about eight minutes
on 2 cores. It does not yet show that the model reads the image (F1-T 0.0 with and without the volumes, README
"Cosmos"); neither did the default's lesion-map stand-in on a Cosmos lesion channel (encoder.lesion_channel=True,
projector features='lesion', encoder_pretrain with objective lesion_map before full: 400 and 800 steps, 600 studies,
F1-T 0.0 both ways, 16 min), so it is not in this order:

    python launch.py --config configs/cosmos_tiny.py --workdir runs/cosmos_tiny
"""
import ml_collections

from jaxpetct.config import base_config, stage


def get_config(arg=None):
    c = base_config()
    c.name = "cosmos_tiny"
    c.data.synthetic.n = 120
    c.model.encoder = ml_collections.ConfigDict(dict(preset="cosmos_tiny", hf_dir="", channels=2, depth=32, height=64,
                                                     width=64, dtype="float32", param_dtype="float32", remat=False))
    # Cosmos latents carry no lesion logit: the projector reads every latent value of a frame (8 x 8 x 4 = 256)
    c.model.projector.update(dict(pool=1, pool_op="mean", features="all"))
    c.order = ("tokenizer_finetune", "full", "align", "lora")
    # A step of the tokenizer on 4 volumes (encode, decode, SSIM3D and their backward) takes ~2 s on 2 cores
    c.stages.tokenizer_finetune = stage(40, peak_lr=2e-3, weight_decay=1e-5, warmup_fraction=0.0, batch_size=4,
                                        log_every=10, save_every=40, eval_every=20, best_metric="")
    c.stages.full.update(dict(steps=240, save_every=120))
    c.stages.align.update(dict(steps=60, save_every=60))
    c.stages.lora.update(dict(steps=100, save_every=100, eval_every=50))
    return c
