"""CT-ViT + Mistral-7B (O+G) on one 8-GPU node (the paper used 4 GPUs with DeepSpeed): mesh fsdp 8.

    JAXPETCT_SALT=... python launch.py --config configs/pods/gpu_1x8_h100.py --workdir runs/h100x8 \\
        --config.data.manual_dir=/data/vimed --config.model.decoder.hf_dir=/models/llava-med-v1.5-mistral-7b
"""
from jaxpetct.config import paper_config


def get_config(arg=None):
    c = paper_config("mistral_7b", "OG")
    c.name = "pod_gpu_1x8_h100"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 1
    # A stage's batch is the optimizer step's (global = per-host batch x hosts); accumulation splits it into
    # micro-batches of 32 rows, 4 per GPU (`--mode plan`: align and lora fit an H100 with 10 % to spare).
    c.stages.align.batch_size, c.stages.align.grad_accum_steps = 256, 8  # the paper's 256
    c.stages.lora.batch_size, c.stages.lora.grad_accum_steps = 128, 4  # the paper's 128
    c.plan.target, c.plan.devices, c.plan.processes = "h100", 8, 1
    return c
