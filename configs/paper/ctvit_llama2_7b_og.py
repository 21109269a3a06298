"""Paper row: CT-ViT + LLaMA-2-7B, O+G.

    JAXPETCT_SALT=... python launch.py --config configs/paper/ctvit_llama2_7b_og.py --workdir runs/ctvit_llama2_7b_og \
        --config.data.manual_dir=/data/ViMed-PET --config.model.decoder.hf_dir=/models/<pretrained LLM>
"""
from jaxpetct.paper import paper_config


def get_config(arg=None):
    return paper_config("llama2_7b", "OG")
