"""Paper row: CT-ViT + Mistral-7B, O+G (the paper's best report-generation row: BLEU-4 58.07, ROUGE-L 72.74, F1-T 51.11).

    JAXPETCT_SALT=... python launch.py --config configs/paper/ctvit_mistral7b_og.py --workdir runs/ctvit_mistral7b_og \
        --config.data.manual_dir=/data/ViMed-PET --config.model.decoder.hf_dir=/models/<pretrained LLM>
"""
from jaxpetct.paper import paper_config


def get_config(arg=None):
    return paper_config("mistral_7b", "OG")
