"""The paper's table rows as configs (configs/paper/*.py and configs/pods/*.py start from `paper_config`).

Each row is the embedded default (jaxpetct/config.py) with what the paper's recipe changes: the release's
140x480x480 volumes, the paper CT-ViT, a 7B decoder, LoRA r64/a16, bf16, length 2048, its batches and epochs.
The Cosmos rows (`vision="cosmos"`) swap CT-ViT for NVIDIA's Cosmos CV8x8x8 tokenizer, fine-tuned on the volumes
first (`_cosmos`).
"""
from __future__ import annotations

import ml_collections

from jaxpetct.config import ALL_LINEARS, base_config, stage

_LLMS = {
    # decoder preset, chat template, tokenizer spec. Real runs point model.decoder.hf_dir at the pretrained
    # weights (and data.tokenizer at their tokenizer directory when it is not Mistral's).
    "mistral_7b": ("mistral_7b", "mistral", "mistral-v1"),  # LLaVA-Med v1.5 (Mistral-7B-Instruct-v0.2 base)
    "llama2_7b": ("llama2_7b", "llama2", ""),
    "qwen2_0_5b": ("qwen2_0_5b", "chatml", ""),
}
# The paper's data ablations: O = original reports; +G = fact-preserving paraphrases; +C = study comparisons. Its
# VQA row is the O+G+C model, instruction-tuned on the release's VQA conversations as well (~8.3 k, about as many
# as the report pairs: weight 1).
_MIXES = {
    "O": ((("regions", "report", 1.0),), 0.0),
    "OG": ((("regions", "report", 1.0),), 0.5),
    "OGC": ((("regions", "report", 1.0), ("comparison", "comparison", 0.5), ("vqa", "vqa", 1.0)), 0.5),
}


def paper_config(llm: str = "mistral_7b", mix: str = "OG", vision: str = "ctvit") -> ml_collections.ConfigDict:
    """CT-ViT (140x480x480, 14 tokens of 24x24x512) + linear projector + a 7B LLM: align then LoRA r64/a16.

    Recipe from the paper: align = projector only, lr 2e-3, 20 epochs, global batch 256, cosine, 3 % warm-up,
    bf16, max length 2048; lora = LoRA r 64, alpha 16, dropout 0.05 on every linear of the LLM plus the
    projector, lr 2e-5, 20 epochs. A stage's batch_size is per host and is the whole optimizer step: global batch
    = batch_size x hosts (256 and 128 here, on one host); grad_accum_steps loader batches of batch_size /
    grad_accum_steps rows make one step, one at a time in memory: it sets the memory, not the batch. Sized for the paper's 4 GPUs, planned as 4 x H100 (mesh fsdp 4;
    align 256 and lora 128 in loader batches of 32, 8 rows a GPU): `launch.py --mode plan` shows whether a change
    fits (align 36.4 GiB, lora 46.7 GiB a GPU). `vision="cosmos"`: the Cosmos rows (`_cosmos`).
    """
    if llm not in _LLMS or mix not in _MIXES or vision not in ("ctvit", "cosmos"):
        raise ValueError(f"llm in {sorted(_LLMS)}, mix in {sorted(_MIXES)}, vision 'ctvit' or 'cosmos'")
    preset, template, tokenizer = _LLMS[llm]
    c = base_config()
    c.name = f"paper_{vision}_{llm}_{mix}"
    c.salt = ""  # real data: set $JAXPETCT_SALT (refused when empty)
    c.data.source = "release"
    c.data.manual_dir = ""  # --config.data.manual_dir=/path/to/ViMed-PET
    c.data.record_shape = (140, 480, 480)
    c.data.cache_mb = 0  # a record is ~130 MB: a cache would hold a handful of 2,757 studies in every loader process
    c.data.augment.edge_drop = (10, 20)  # the reference code's range, for 140-slice volumes
    c.data.train_mix, c.data.paraphrase_prob = _MIXES[mix]
    c.data.tokenizer = tokenizer
    c.data.template = template
    c.data.max_length = 2048
    c.data.buckets = (512, 1024, 2048)
    c.data.batch_size = 16
    c.data.val_batch_size = 8  # validation-loss batches (eval.batch_size: generation)
    c.data.worker_count = 8
    c.data.read_buffer = 1  # per process: 8 workers x (1 + their own buffers) loader batches of 140x480x480 volumes
    c.model.encoder = ml_collections.ConfigDict(dict(preset="paper", channels=2, dtype="bfloat16"))
    # The paper's projector reads every CT-ViT feature of every token (the default pools lesion logits).
    c.model.projector.update(dict(kind="linear", pool=1, pool_op="mean", features="all", dtype="bfloat16"))
    c.model.decoder = ml_collections.ConfigDict(dict(preset=preset, hf_dir="", dtype="bfloat16",
                                                      param_dtype="float32", scan_layers=True, remat=True))
    c.model.lora.update(dict(rank=64, alpha=16.0, dropout=0.05, targets=ALL_LINEARS))
    c.order = ("align", "lora")
    # stage 1 of the paper, when a run adds it to `order`: CLIP against the reports (configs/paper/encoder_pretrain_*)
    c.stages.encoder_pretrain = stage(epochs=20, peak_lr=1e-4, save_every=500, log_every=10, best_metric="",
                                      objective="clip")
    c.stages.align = stage(epochs=20, peak_lr=2e-3, batch_size=256, grad_accum_steps=8, save_every=500,
                           log_every=10, eval_every=1000)
    c.stages.lora = stage(epochs=20, peak_lr=2e-5, batch_size=128, grad_accum_steps=4, save_every=500, log_every=10,
                          eval_every=1000)
    c.mesh.update(dict(data=1, fsdp=-1, tensor=1))
    c.eval.max_new_tokens = 512
    c.eval.tasks = ("report", "vqa") if mix == "OGC" else ("report",)
    c.eval.batch_size = 16
    c.plan.target, c.plan.devices = "h100", 4  # the paper's 4 GPUs (fsdp -1 takes all 4)
    return _cosmos(c) if vision == "cosmos" else c


def _cosmos(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's Cosmos rows: Cosmos CV8x8x8 (a diffusers AutoencoderKLCosmos folder in model.encoder.hf_dir) reads
    the volumes resized by the loader to 120 x 256 x 256 (the records stay the CT-ViT rows' 140 x 480 x 480, one
    build for both), padded to 121 frames: 16 latent frames of 32 x 32 x 16, i.e. 16 visual tokens, each read whole
    by the projector (pool 1: a 16,384 x 4,096 matrix; models/cosmos/vision.py says why not pooled).

    Stage 1 fine-tunes the whole autoencoder on the volumes (tokenizer_finetune): L1 + 0.1 (1 - SSIM3D), Adam
    lr 1e-4 with torch's L2 weight decay 1e-5 (on kernels), no clipping, cosine from the peak, 20 epochs of the
    regions records, batch 8, bf16 compute with float32 master weights, blocks rematerialised. align and LoRA then
    take it frozen, as CT-ViT.
    """
    c.model.encoder = ml_collections.ConfigDict(dict(preset="cosmos_cv8x8x8", hf_dir="", channels=2, depth=120,
                                                      height=256, width=256, dtype="bfloat16", param_dtype="float32",
                                                      remat=True))
    c.order = ("tokenizer_finetune", "align", "lora")
    # batch 8 as 2 micro-batches of 4 (one volume a GPU): one micro-batch of 8 plans at 64.2 GiB a GPU, within 1 GiB of
    # the 90 % line; the update is the same (losses are sums over volumes)
    c.stages.tokenizer_finetune = stage(epochs=20, peak_lr=1e-4, weight_decay=1e-5, optimizer="adam", clip_norm=0.0,
                                        warmup_fraction=0.0, batch_size=8, grad_accum_steps=2, save_every=500,
                                        log_every=10, eval_every=1000)
    return c
