"""Variant: CT-ViT + Qwen2.5-0.5B-Instruct (O+G), a small LLM for quick iterations on one GPU.

Qwen2.5 brings its own tokenizer: point data.tokenizer at the model folder (tokenizer.json is read offline).

    JAXPETCT_SALT=... python launch.py --config configs/paper/qwen25_0_5b_og.py --workdir runs/qwen05 \\
        --config.data.manual_dir=/data/ViMed-PET --config.model.decoder.hf_dir=/models/Qwen2.5-0.5B-Instruct \\
        --config.data.tokenizer=/models/Qwen2.5-0.5B-Instruct
"""
from jaxpetct.paper import paper_config


def get_config(arg=None):
    c = paper_config("qwen2_0_5b", "OG")
    c.name = "paper_ctvit_qwen25_0_5b_og"
    c.model.projector.pool = 2  # 12x12x512 = 73,728 features per visual token instead of 294,912
    c.stages.lora.peak_lr = 1e-4
    # The paper's global batches (align 256, lora 128) in loader batches of 32 (accumulated: one micro-batch of
    # volumes in memory at a time). `launch.py --mode plan`: align 48.9 GiB, lora 59.2 GiB on one H100.
    c.stages.align.grad_accum_steps = 8
    c.stages.lora.grad_accum_steps = 4
    c.plan.target, c.plan.devices = "h100", 1
    return c
