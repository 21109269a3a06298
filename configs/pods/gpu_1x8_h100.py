"""CT-ViT + Mistral-7B (O+G) on one 8-GPU node (the paper used 4 GPUs with DeepSpeed): mesh fsdp 8.

    JAXPETCT_SALT=... python launch.py --config configs/pods/gpu_1x8_h100.py --workdir runs/h100x8 \\
        --config.data.manual_dir=/data/vimed --config.model.decoder.hf_dir=/models/llava-med-v1.5-mistral-7b
"""
from jaxpetct.paper import paper_config


def get_config(arg=None):
    c = paper_config("mistral_7b", "OG")
    c.name = "pod_gpu_1x8_h100"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 1
    # A stage's batch is the optimizer step's (global = per-host batch x hosts); the loader delivers it in
    # grad_accum_steps micro-batches of 32 rows, 4 per GPU (`--mode plan`: align 19.9 GiB, lora 24.8 GiB per GPU:
    # room for larger micro-batches once a GPU run measures its real memory).
    c.stages.align.batch_size, c.stages.align.grad_accum_steps = 256, 8  # the paper's 256
    c.stages.lora.batch_size, c.stages.lora.grad_accum_steps = 128, 4  # the paper's 128
    c.plan.target, c.plan.devices, c.plan.processes = "h100", 8, 1
    return c
