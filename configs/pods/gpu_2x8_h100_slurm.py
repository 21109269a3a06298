"""CT-ViT + Mistral-7B (O+G) on 2 nodes x 8 H100/H200 under SLURM: mesh data 2 x fsdp 8 (FSDP inside a node's
NVLink domain, data parallel across nodes). One process per node; SLURM's variables start jax.distributed.

    srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 bash -c "JAXPETCT_SALT=... \\
        python launch.py --config configs/pods/gpu_2x8_h100_slurm.py --workdir /shared/runs/h100 \\
        --config.data.manual_dir=/shared/vimed --config.model.decoder.hf_dir=/shared/models/llava-med-mistral-7b"
"""
from jaxpetct.paper import paper_config


def get_config(arg=None):
    c = paper_config("mistral_7b", "OG")
    c.name = "pod_gpu_2x8_h100"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 8, 1
    # Per-node batches (global = per-node x 2 nodes); accumulation splits each step into micro-batches of 64 rows,
    # 4 per GPU (`--mode plan` checks the fit on H100s).
    c.stages.align.batch_size, c.stages.align.grad_accum_steps = 128, 4  # 256 global, the paper's
    c.stages.lora.batch_size, c.stages.lora.grad_accum_steps = 64, 2  # 128 global, the paper's
    c.plan.target, c.plan.devices, c.plan.processes = "h100", 16, 2
    return c
