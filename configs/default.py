"""The embedded default: a synthetic cohort -> regions dataset -> tiny CT-ViT + Mistral-tokenizer VLM -> align
-> LoRA -> evaluation -> export, on a laptop CPU in minutes (`python launch.py`)."""
from jaxpetct.config import base_config


def get_config(arg=None):
    return base_config()
