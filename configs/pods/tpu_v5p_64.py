"""CT-ViT + Mistral-7B (O+G) on a TPU v5p-64 slice: 32 chips on 8 hosts, mesh data 4 x fsdp 8.

Run the same command on every host (gcloud ... tpu-vm ssh --worker=all); jax.distributed is started from the
TPU environment automatically. Data and workdir must be a POSIX path every host reads and writes (a Filestore NFS
share, or a bucket mounted with gcsfuse at the same path on every worker): process 0 writes the records and the
shared files, the others read them.

    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command "cd jaxpetct && JAXPETCT_SALT=... \\
        python launch.py --config configs/pods/tpu_v5p_64.py --workdir /mnt/shared/runs/v5p \\
        --config.data.manual_dir=/mnt/shared/ViMed-PET --config.data.data_dir=/mnt/shared/tfds \\
        --config.model.decoder.hf_dir=/mnt/shared/models/llava-med-v1.5-mistral-7b"
"""
from jaxpetct.paper import paper_config


def get_config(arg=None):
    c = paper_config("mistral_7b", "OG")
    c.name = "pod_tpu_v5p_64"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 4, 8, 1
    # Per-host batches (global = per-host x 8 hosts); loader micro-batches of 128 rows globally, 4 per chip (`--mode plan` checks
    # the fit on v5p's 95 GB).
    c.stages.align.batch_size, c.stages.align.grad_accum_steps = 32, 2  # 256 global, the paper's
    c.stages.lora.batch_size, c.stages.lora.grad_accum_steps = 16, 1  # 128 global, the paper's
    c.plan.target, c.plan.devices, c.plan.processes = "tpu_v5p", 32, 8
    return c
