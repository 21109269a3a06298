"""One stored record -> one model example: images in [0, 1] channels at the encoder's grid, tokens with masks.

The transform is a Grain `RandomMap`: every random choice (augmentations, instruction wording, paraphrase) draws
from the generator Grain derives from (seed, element index), so an example is a pure function of its position in
the stream and a restored iterator reproduces it exactly.

Image path: stored int16/uint16 -> HU / SUV (records.decode_*) -> [edge-slice drop] -> trilinear resize to the
encoder grid -> [in-plane rotation] -> per-channel window/scale -> [Gaussian noise]. The bracketed steps are the
paper's optional augmentations, off unless `AugmentConfig.enabled`.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import grain
import numpy as np

from jaxpetct.data import records
from jaxpetct.data.lesion_targets import lesion_map
from jaxpetct.data.volume import resize, to_channels
from jaxpetct.text import prompts
from jaxpetct.text.augment import paraphrase, paraphrase_report
from jaxpetct.text.report import report_from_json
from jaxpetct.text.vqa import llava_messages

TASKS = ("report", "vqa", "comparison", "clip", "lesion_map", "volume")  # volume: images only (tokenizer_finetune)
_TOKENIZERS: dict = {}


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    shape: tuple = (32, 64, 64)  # the encoder's input grid (D, H, W); (140, 480, 480) for the paper's CT-ViT
    channels: tuple = ("pet", "ct")  # "pet", "ct" (= ct:ctclip, [-1000, 1000] HU), "ct:soft|lung|bone", "ct:c,w"
    pet_mode: str = "linear"  # SUV / pet_max clipped at 1, or "log"
    pet_max: float = 10.0
    out_range: str = "unit"  # [0, 1]; "symmetric" gives [-1, 1]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The reference code's image augmentations (there, off): drop 10-20 edge slices, rotate +-15 deg, noise."""

    enabled: bool = False
    edge_drop: tuple = (10, 20)  # slices removed at one end (the volume is resized back afterwards)
    edge_drop_prob: float = 0.5
    rotate_deg: float = 15.0
    rotate_prob: float = 0.5
    noise_std: float = 0.02  # on the normalised [0, 1] scale
    noise_prob: float = 0.5


@dataclasses.dataclass(frozen=True)
class TextConfig:
    template: str = "mistral"
    num_image_tokens: int = 14  # CT-ViT: one visual token per temporal patch
    max_length: int = 2048
    instruction_variants: bool = True  # training draws among paraphrased instructions; eval uses the canonical one
    paraphrase_prob: float = 0.0  # the paper's "G": a fact-preserving paraphrase of the target
    system: Optional[str] = None
    language: str = "vi"  # report text and instructions: "vi", or "en" (the release's reports_en)


def tokenizer_for(spec):
    """A tokenizer from a spec ("mistral-v1" or an HF folder), loaded once per process (Grain workers too)."""
    if not isinstance(spec, (str, bytes)) and not hasattr(spec, "__fspath__"):
        return spec  # already a Tokenizer
    key = str(spec)
    if key not in _TOKENIZERS:
        from jaxpetct.text.tokenizer import load_tokenizer

        _TOKENIZERS[key] = load_tokenizer(key)
    return _TOKENIZERS[key]


# --- images ----------------------------------------------------------------------------------------------------

def physical(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(CT HU, PET values) as float32; a comparison record's two sides are joined along depth (prior first)."""
    ct = records.decode_ct(record["ct"])
    pet = records.decode_pet(record["pet"], float(record["pet_scale"]))
    if ct.ndim == 4:  # comparison: (2, D, H, W) -> (2D, H, W), the paper's 70 + 70 slices
        ct, pet = ct.reshape(-1, *ct.shape[2:]), pet.reshape(-1, *pet.shape[2:])
    return ct, pet


def _edge_drop(ct, pet, cfg: AugmentConfig, rng: np.random.Generator):
    lo, hi = cfg.edge_drop
    k = int(rng.integers(lo, hi + 1))
    if k >= ct.shape[0] // 2:  # never more than half the volume
        return ct, pet
    sl = slice(k, None) if rng.random() < 0.5 else slice(0, ct.shape[0] - k)
    return ct[sl], pet[sl]


def _rotate(x: np.ndarray, angle: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.rotate(x, angle, axes=(-1, -2), reshape=False, order=1, mode="nearest")


def model_images(record: dict, cfg: ImageConfig, aug: AugmentConfig, rng: Optional[np.random.Generator]) -> np.ndarray:
    """(C, D, H, W) float32 encoder input of a volume record (2D slice records give D = 1)."""
    ct, pet = physical(record)
    if ct.ndim == 2:
        ct, pet = ct[None], pet[None]
    use = aug.enabled and rng is not None
    if use and rng.random() < aug.edge_drop_prob:
        ct, pet = _edge_drop(ct, pet, aug, rng)
    shape = tuple(cfg.shape) if ct.shape[0] > 1 or len(cfg.shape) == 3 else (1, *cfg.shape[-2:])
    ct, pet = resize(ct, shape), resize(pet, shape)
    if use and rng.random() < aug.rotate_prob:
        angle = float(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
        ct, pet = _rotate(ct, angle), _rotate(pet, angle)
    x = to_channels(ct, pet, cfg.channels, pet_mode=cfg.pet_mode, pet_max=cfg.pet_max, out_range=cfg.out_range)
    if use and rng.random() < aug.noise_prob:
        x = x + rng.normal(0.0, aug.noise_std, x.shape).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


# --- text ------------------------------------------------------------------------------------------------------

def _seed(rng: Optional[np.random.Generator]) -> Optional[int]:
    return None if rng is None else int(rng.integers(0, 2**31 - 1))


def task_messages(record: dict, task: str, text: TextConfig, rng: Optional[np.random.Generator]):
    """(messages, reference text, task-specific id of the image) for a record; rng None = canonical wording."""
    t = records.as_text
    variant = _seed(rng) if text.instruction_variants else None
    g = rng is not None and text.paraphrase_prob > 0 and rng.random() < text.paraphrase_prob
    if task == "report":
        en = text.language == "en"  # G paraphrases are Vietnamese: config checks refuse them with English
        if "findings" in record:  # regions
            section = t(record["section"])
            target = t(record["findings_en" if en else "findings"])
            if g and not en:
                target = paraphrase(target, _seed(rng), salt=section)
            msgs = prompts.report_messages(target, section, variant, text.system, text.language)
        else:  # study
            target = t(record["report_en" if en else "report"])
            if g and not en:
                target = paraphrase_report(report_from_json(json.loads(t(record["report_json"]))), _seed(rng)).full_text()
            msgs = prompts.report_messages(target, None, variant, text.system, text.language)
        return msgs, target
    if task == "vqa":
        msgs = llava_messages(json.loads(t(record["conversation"])))
        if text.system is not None:
            msgs = [prompts.Message("system", text.system), *msgs]
        answers = [m.content for m in msgs if m.role == "assistant"]
        return msgs, answers[0] if answers else ""
    if task == "comparison":  # the record holds the text comparison_messages would write from the lesion lists
        target = t(record["text"])
        msgs = ([prompts.Message("system", text.system)] if text.system is not None else [])
        msgs += [prompts.Message("user", prompts.image_turn(prompts.comparison_instruction(variant))),
                 prompts.Message("assistant", target)]
        return msgs, target
    raise ValueError(f"task {task!r} has no conversation (known: {TASKS})")


def clip_text(record: dict) -> str:
    """The report text a volume is contrasted with in encoder pre-training (region findings, or the report)."""
    t = records.as_text
    return t(record["findings"]) if "findings" in record else t(record.get("report", record.get("text", b"")))


def clip_tokens(text: str, tokenizer, max_length: int) -> np.ndarray:
    """BOS + text + EOS, cut to max_length with the EOS kept (RoBERTa/PhoBERT's <s> ... </s>)."""
    body = tokenizer.encode(text)
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    body = body[:max(0, max_length - len(bos) - 1)]
    return np.asarray(bos + body + [tokenizer.eos_id], np.int32)


# --- the Grain transform ---------------------------------------------------------------------------------------

class ToModelInputs(grain.transforms.RandomMap):
    """record -> {"images", "input_ids", "loss_mask", "image_mask", "meta"} (or "text_ids" for the clip task,
    "lesion_map" (T, h, w) for the lesion_map task, which needs `lesion_table` and the encoder's token `lesion_grid`;
    its images are never augmented, since rotation or slice drops would move the lesions off their tokens; the
    volume task gives the images alone)."""

    def __init__(self, task: str, tokenizer: Any, image: ImageConfig = ImageConfig(),
                 augment: AugmentConfig = AugmentConfig(), text: TextConfig = TextConfig(), *, train: bool = True,
                 lesion_table: Optional[dict] = None, lesion_grid: tuple = (), lesion_slice_tokens: tuple = ()):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task == "lesion_map" and (lesion_table is None or len(lesion_grid) != 3):
            raise ValueError("the lesion_map task needs a lesion table and the encoder's (T, h, w) token grid")
        self.task, self.tokenizer, self.image, self.augment, self.text, self.train = (
            task, tokenizer, image, augment, text, train)
        self.lesion_table, self.lesion_grid = lesion_table, tuple(lesion_grid)
        self.lesion_slice_tokens = tuple(lesion_slice_tokens)

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        rng = rng if self.train else None
        rid = records.as_text(record["id"])
        sid = records.as_text(record.get("study_id", b""))
        meta = {"id": rid, "study_id": sid, "task": self.task}
        if self.task == "lesion_map":
            if sid not in self.lesion_table:
                raise ValueError(f"record {rid}: study {sid} is not in the lesion table")
            meta["reference"] = ""
            return {"images": model_images(record, self.image, AugmentConfig(), None),
                    "lesion_map": lesion_map(record, self.lesion_table[sid], self.lesion_grid,
                                               self.lesion_slice_tokens), "meta": meta}
        out = {"images": model_images(record, self.image, self.augment, rng)}
        if self.task == "volume":  # the volume is its own target: no text (train.tasks.tokenizer_reconstruction_loss)
            meta["reference"] = ""
            return {**out, "meta": meta}
        tok = tokenizer_for(self.tokenizer)
        try:
            if self.task == "clip":
                reference = clip_text(record)
                out["text_ids"] = clip_tokens(reference, tok, self.text.max_length)
            else:
                msgs, reference = task_messages(record, self.task, self.text, rng)
                enc = prompts.encode_conversation(msgs, tok, self.text.template,
                                                  num_image_tokens=self.text.num_image_tokens,
                                                  prompt_only=not self.train, max_length=self.text.max_length)
                out.update(input_ids=enc.input_ids, loss_mask=enc.loss_mask, image_mask=enc.image_mask)
                if self.task == "vqa":
                    meta["conversation"] = records.as_text(record["conversation"])
        except (prompts.PromptError, ValueError) as e:
            raise ValueError(f"record {rid}: {e}") from None
        meta["reference"] = reference
        out["meta"] = meta
        return out
