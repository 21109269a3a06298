"""Tiny random VLMs and evaluation examples built straight from the synthetic cohort (no data pipeline needed).

The volume preparation here is deliberately simple (CT soft-tissue window and SUV/10, each clipped to [0, 1],
linear resize to the encoder's input): the tests check the evaluation plumbing, not image preprocessing.
"""
from __future__ import annotations

import numpy as np
from flax import nnx
from scipy import ndimage

from jaxpetct.eval.runner import EvalExample
from jaxpetct.models import decoder_config as dcfg
from jaxpetct.models.ctvit import CTViT, CTViTConfig
from jaxpetct.models.decoder import Decoder
from jaxpetct.models.projector import Projector, ProjectorConfig
from jaxpetct.models.vlm import VLM
from jaxpetct.studies import cohort, synthetic
from jaxpetct.studies.regions import split_study
from jaxpetct.text.report import SECTIONS

SALT = "eval-test-salt"


def tiny_vlm(vocab_size: int = 32000, seed: int = 0, prefix_lm: bool = False) -> VLM:
    enc_cfg = CTViTConfig.tiny(channels=2)
    dec_cfg = dcfg.tiny(vocab_size=vocab_size, num_layers=1)
    encoder = CTViT(enc_cfg, rngs=nnx.Rngs(seed))
    projector = Projector(ProjectorConfig.for_encoder(enc_cfg, dec_cfg.hidden_size), rngs=nnx.Rngs(seed + 1))
    return VLM(encoder, projector, Decoder(dec_cfg, rngs=nnx.Rngs(seed + 2)), prefix_lm=prefix_lm)


def tiny_export(out_dir, decoding, language: str = "vi"):
    """A tiny random VLM exported with the preprocess record prediction reads (records 16x32x32, the encoder's
    own input grid): what the predict and serve tests load."""
    from jaxpetct.data.inputs import ImageConfig
    from jaxpetct.eval.export import export_vlm
    from jaxpetct.predict import Preprocess

    model = tiny_vlm()
    pre = Preprocess(record_shape=(16, 32, 32), image=ImageConfig(shape=tuple(model.encoder.cfg.input_shape[1:])),
                     decoding=decoding, language=language)
    return export_vlm(model, out_dir, preprocess=pre.to_json())


def encoder_input(ct: np.ndarray, pet: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(2, D, H, W): PET (SUV/10) and CT (window 40/400 HU), each in [0, 1], resized to `shape`."""
    ct01 = np.clip((ct + 160.0) / 400.0, 0.0, 1.0)
    pet01 = np.clip(pet / 10.0, 0.0, 1.0)
    out = [ndimage.zoom(v, [s / n for s, n in zip(shape, v.shape)], order=1) for v in (pet01, ct01)]
    return np.stack(out).astype(np.float32)


def cohort_studies(root, n: int = 3):
    synthetic.write_cohort(str(root), n=n, seed=0, size="tiny")
    return [cohort.load_study(ref, salt=SALT) for ref in cohort.list_studies(str(root))]


def study_examples(studies, input_shape=(16, 32, 32)) -> list[EvalExample]:
    """Per study: a whole-study report, the chest region's findings, and a two-turn VQA conversation."""
    examples = []
    for s in studies:
        whole = encoder_input(s.ct.data, s.pet.data, input_shape)
        examples.append(EvalExample.report(s.study_id, whole, s.report.full_text(), None, s.study_id))
        chest = next(r for r in split_study(s).regions if r.name == "chest")
        img = encoder_input(s.ct.data[chest.slices], s.pet.data[chest.slices], input_shape)
        examples.append(EvalExample.report(f"{s.study_id}:chest", img, s.report.findings[SECTIONS[1]] or "Bình thường.",
                                           "chest", s.study_id))
        pairs = [("Có tổn thương tăng chuyển hoá FDG ở lồng ngực không?", s.report.findings[SECTIONS[1]] or "Không."),
                 ("Nhận định kết quả là gì?", s.report.impression or "Bình thường.")]
        examples.append(EvalExample.vqa(f"{s.study_id}:vqa", whole, pairs, s.study_id))
    return examples
