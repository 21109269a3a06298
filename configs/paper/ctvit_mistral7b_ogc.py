"""Paper row: CT-ViT + Mistral-7B, O+G+C (the paper's VQA row).

    JAXPETCT_SALT=... python launch.py --config configs/paper/ctvit_mistral7b_ogc.py --workdir runs/ctvit_mistral7b_ogc \
        --config.data.manual_dir=/data/ViMed-PET --config.model.decoder.hf_dir=/models/<pretrained LLM>
"""
from jaxpetct.paper import paper_config


def get_config(arg=None):
    return paper_config("mistral_7b", "OGC")
