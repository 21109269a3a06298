"""CT-ViT + Mistral-7B (O+G) on a TPU v5p-64 slice: 32 chips on 8 hosts, mesh data 4 x fsdp 8.

Run the same command on every host (gcloud ... tpu-vm ssh --worker=all); jax.distributed is started from the
TPU environment automatically. Data and workdir must be on storage every host reads (gs://...).

    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command "cd jaxpetct && JAXPETCT_SALT=... \\
        python launch.py --config configs/pods/tpu_v5p_64.py --workdir gs://BUCKET/runs/v5p \\
        --config.data.manual_dir=/mnt/vimed --config.data.data_dir=gs://BUCKET/tfds \\
        --config.model.decoder.hf_dir=/mnt/models/llava-med-v1.5-mistral-7b"
"""
from jaxpetct.config import paper_config


def get_config(arg=None):
    c = paper_config("mistral_7b", "OG")
    c.name = "pod_tpu_v5p_64"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 4, 8, 1
    c.data.batch_size = 8  # per host: 64 global per micro-batch
    c.stages.align.grad_accum_steps = 4  # 256 global
    c.stages.lora.grad_accum_steps = 2  # 128 global
    return c
