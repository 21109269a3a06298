"""Paper row: Cosmos CV8x8x8 + Mistral-7B, O+G+C (report and VQA evaluation). The tokenizer is fine-tuned on the
volumes first (tokenizer_finetune), then align and LoRA as in the CT-ViT rows.

    JAXPETCT_SALT=... python launch.py --config configs/paper/cosmos_mistral7b_ogc.py --workdir runs/cosmos_mistral7b_ogc \
        --config.data.manual_dir=/data/ViMed-PET --config.model.decoder.hf_dir=/models/<pretrained LLM> \
        --config.model.encoder.hf_dir=/models/Cosmos-1.0-Tokenizer-CV8x8x8-diffusers
"""
from jaxpetct.paper import paper_config


def get_config(arg=None):
    return paper_config("mistral_7b", "OGC", vision="cosmos")
