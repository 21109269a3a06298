"""A report for a new patient's study: the build's ingestion, the records' image encoding, eval's generation.

Nothing here is new arithmetic. A study is read by the same readers as the build (de-identification, physics
gate; no report needed), split into the same regions, cropped and quantised exactly as a `regions` record stores
it (`data.examples.region_volumes`), decoded as the loader decodes a record (`data.inputs.model_images`), and
answered by the same batched, jitted generator with the same canonical instruction as `--mode eval`. So a study
of the test split gets the text eval gave it, and a study from a hospital is treated exactly like one in training.

`Preprocess` is what ties an exported model to its inputs (record grid, region overlap, image channels and scales,
tokenizer, decoding defaults); `export` writes it into `vision/vision_config.json` under "preprocess".
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping, Optional, Union

from jaxpetct.data.examples import ExampleError, region_volumes
from jaxpetct.data.inputs import AugmentConfig, ImageConfig, model_images
from jaxpetct.data.plan import BuildOptions
from jaxpetct.data.records import RecordSpec
from jaxpetct.eval.runner import EvalExample, answer_all
from jaxpetct.eval.vlm_generate import DecodingConfig, VLMGenerator
from jaxpetct.errors import UserError
from jaxpetct.studies.study import Study
from jaxpetct.text.tokenizer import MISTRAL_V1, load_tokenizer

DEFAULT_OVERLAP_MM = BuildOptions.region_overlap_mm


class PredictError(UserError):
    """A model or an input that cannot be used; one line, no patient data."""


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a model's inputs were made: the records' grid and region split, the loader's image encoding, the
    tokenizer and the decoding that eval used."""

    record_shape: tuple = (32, 64, 64)
    region_overlap_mm: float = DEFAULT_OVERLAP_MM
    include_whole_body: bool = False
    image: ImageConfig = ImageConfig()
    tokenizer: str = MISTRAL_V1  # "mistral-v1", or "export" for the tokenizer folder inside the export's llm/
    decoding: DecodingConfig = DecodingConfig()
    language: str = "vi"  # the reports the model was trained on: its instructions, report.json keys, extractor

    def to_json(self) -> dict:
        return {"record_shape": list(self.record_shape), "region_overlap_mm": self.region_overlap_mm,
                "include_whole_body": self.include_whole_body,
                "image": {**dataclasses.asdict(self.image), "shape": list(self.image.shape),
                          "channels": list(self.image.channels)},
                "tokenizer": self.tokenizer, "decoding": self.decoding.to_json(), "language": self.language}

    @classmethod
    def from_json(cls, obj: Mapping) -> "Preprocess":
        try:
            dec = {k: v for k, v in dict(obj["decoding"]).items() if k != "greedy"}
            dec["length_buckets"] = tuple(dec["length_buckets"])
            img = dict(obj["image"])
            img.update(shape=tuple(img["shape"]), channels=tuple(img["channels"]))
            return cls(tuple(obj["record_shape"]), float(obj["region_overlap_mm"]), bool(obj["include_whole_body"]),
                       ImageConfig(**img), str(obj["tokenizer"]), DecodingConfig(**dec), str(obj.get("language", "vi")))
        except (KeyError, TypeError, ValueError) as e:
            raise PredictError(f"vision_config.json: preprocess is malformed ({type(e).__name__}: {e})") from None


def preprocess_of(cfg, input_shape: tuple) -> Preprocess:
    """A run's Preprocess from its config (what `--mode eval` used); `input_shape` is the encoder's (C, D, H, W)."""
    image = ImageConfig(shape=tuple(input_shape[1:]), channels=tuple(cfg.data.image.channels),
                        pet_mode=cfg.data.image.pet_mode, pet_max=float(cfg.data.image.pet_max),
                        out_range=cfg.data.image.out_range)
    decoding = DecodingConfig(max_new_tokens=int(cfg.eval.max_new_tokens), temperature=float(cfg.eval.temperature),
                              top_k=int(cfg.eval.top_k), top_p=float(cfg.eval.top_p), seed=int(cfg.seed),
                              batch_size=int(cfg.eval.batch_size), length_buckets=tuple(cfg.data.buckets),
                              template=cfg.data.template)
    tokenizer = MISTRAL_V1 if cfg.data.tokenizer == MISTRAL_V1 else "export"
    return Preprocess(tuple(cfg.data.record_shape), DEFAULT_OVERLAP_MM, False, image, tokenizer, decoding,
                      cfg.data.report_language)


@dataclasses.dataclass(frozen=True)
class Prediction:
    study_id: str
    regions: dict  # region name -> generated text, in the split's order
    sections: dict  # region name -> the report section it writes (text.report.SECTIONS)
    notes: tuple = ()  # what the region split worked around (clamped bounds, defaults)

    @property
    def findings(self) -> dict:
        """Report section -> generated findings."""
        return {self.sections[r]: text for r, text in self.regions.items()}


class Predictor:
    """A model loaded and compiled once; `predict(study)` per study (regions batched together)."""

    def __init__(self, model, tokenizer, pre: Preprocess, *, mesh=None):
        self.pre = pre
        self.generator = VLMGenerator(model, tokenizer, pre.decoding, mesh)
        self.options = BuildOptions(RecordSpec("regions", tuple(pre.record_shape)), salt="-",
                                    region_overlap_mm=pre.region_overlap_mm,
                                    include_whole_body=pre.include_whole_body)

    @classmethod
    def from_export(cls, export_dir: Union[str, pathlib.Path], decoding: Optional[Mapping[str, Any]] = None,
                    **kw) -> "Predictor":
        """An export directory (eval.export); `decoding` overrides the exported decoding defaults."""
        from jaxpetct.eval.export import ExportError, load_vision, load_vlm
        from jaxpetct.models.safetensors_io import CheckpointError

        root = pathlib.Path(export_dir)
        try:
            meta = load_vision(root)[2]
            pre = Preprocess.from_json(meta["preprocess"]) if "preprocess" in meta else None
            if pre is None:
                raise PredictError(f"{root.name}/vision/vision_config.json has no preprocess record (exported before "
                                   "jaxpetct wrote one): re-export the run with `python launch.py --mode export`")
            if decoding:
                pre = dataclasses.replace(pre, decoding=dataclasses.replace(pre.decoding, **decoding))
            model = load_vlm(root)
            tokenizer = load_tokenizer(MISTRAL_V1 if pre.tokenizer == MISTRAL_V1 else root / "llm")
        except (ExportError, CheckpointError, OSError, ValueError) as e:
            raise PredictError(f"--model {root.name}: {' '.join(str(e).split())}") from None
        return cls(model, tokenizer, pre, **kw)

    def examples(self, study: Study) -> tuple[list[EvalExample], dict, tuple]:
        """One report example per region (its volume encoded as a record and decoded as the loader does), each
        region's report section, and the split's notes."""
        split, volumes = region_volumes(study, self.options)
        out = []
        for region, image in volumes:
            x = model_images(image, self.pre.image, AugmentConfig(), None)
            out.append(EvalExample.report(f"{study.study_id}:{region.name}", x, "", region=region.name,
                                          study_id=study.study_id, language=self.pre.language))
        return out, {r.name: r.section for r, _ in volumes}, tuple(split.notes)

    def predict(self, study: Study) -> Prediction:
        try:
            examples, sections, notes = self.examples(study)
        except ExampleError as e:
            raise PredictError(e.reason) from None
        records, skipped = answer_all(self.generator, self.pre.decoding, examples)
        if skipped:
            raise PredictError(f"region {skipped[0]['id']}: {skipped[0]['reason']}")
        return Prediction(study.study_id, {r["region"]: r["generated"] for r in records}, sections, notes)
