"""The embedded default with the paper's O+G+C data (its VQA row): report pairs with G paraphrases, C study
comparisons and VQA conversations in the instruction-tuning mixture; evaluation scores report generation and VQA
(open-ended text metrics and closed-form accuracy per question kind, each beside the blank-volume baseline).

    python launch.py --config configs/demo_ogc.py --workdir runs/demo_ogc
"""
from jaxpetct.config import base_config


def get_config(arg=None):
    c = base_config()
    c.name = "demo_ogc"
    c.data.train_mix = (("regions", "report", 1.0), ("comparison", "comparison", 0.5), ("vqa", "vqa", 1.0))
    c.data.paraphrase_prob = 0.5
    c.eval.tasks = ("report", "vqa")
    return c
