"""Paper row: CT-ViT + Mistral-7B, original reports (O).

    JAXPETCT_SALT=... python launch.py --config configs/paper/ctvit_mistral7b_o.py --workdir runs/ctvit_mistral7b_o \
        --config.data.manual_dir=/data/ViMed-PET --config.model.decoder.hf_dir=/models/<pretrained LLM>
"""
from jaxpetct.paper import paper_config


def get_config(arg=None):
    return paper_config("mistral_7b", "O")
