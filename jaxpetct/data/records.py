"""The on-disk form of a ViMed-PET record: how HU and SUV are stored, and the TFDS features of each config.

Intensity encoding (the contract every reader relies on; the same text sits in each feature's `doc`):

* CT is int16 HU: stored = round(HU), so a decoded value is within 0.5 HU of the ingested (resampled) value.
  Values outside [-32768, 32767] are clipped and counted in `ct_clipped`.
* PET is uint16 with a per-record `pet_scale`: value = stored x pet_scale in `pet_units`. The scale is fixed per
  unit (`PET_SCALES`): SUVbw 0.002 (0..131.07 SUV, within 0.001 SUV), BQML 4.0 Bq/ml, raw 1.0 (the release's
  undocumented int16, kept exact). Values below 0 or above the range are clipped and counted in `pet_clipped`.

"Ingested" means the values after resampling to the stored grid (trilinear, half-pixel centres, as
`torch.nn.functional.interpolate(mode="trilinear", align_corners=False)`); when the stored grid is the native
one, the release's int16 HU come back exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from jaxpetct.errors import UserError

PET_SCALES = {"SUVbw": 0.002, "BQML": 4.0, "raw": 1.0}
CT_DTYPE, PET_DTYPE = np.int16, np.uint16
_I16, _U16 = np.iinfo(np.int16), np.iinfo(np.uint16)
KINDS = ("regions", "study", "slices", "vqa", "comparison")

CT_DOC = ("CT in HU as int16: HU = stored (rounded to the nearest HU, so |decoded - ingested| <= 0.5 HU); "
          "values outside the int16 range are clipped and counted in ct_clipped.")
PET_DOC = ("PET as uint16: value = stored * pet_scale in pet_units (SUVbw: scale 0.002, |decoded - ingested| <= "
           "0.001 SUV up to 131.07; BQML: scale 4 Bq/ml; raw: scale 1, exact); clipped voxels are counted in "
           "pet_clipped.")


class RecordError(UserError, ValueError):
    """A study's volumes cannot be encoded (unknown units, non-finite values); names the study and reason."""


def encode_ct(hu: np.ndarray) -> tuple[np.ndarray, int]:
    """(int16 HU, number of clipped voxels). Non-finite values are a RecordError upstream, not silently zero."""
    r = np.rint(np.asarray(hu, dtype=np.float32))
    clipped = int(np.count_nonzero((r < _I16.min) | (r > _I16.max)))
    return np.clip(r, _I16.min, _I16.max).astype(CT_DTYPE), clipped


def decode_ct(stored: np.ndarray) -> np.ndarray:
    return np.asarray(stored, dtype=np.float32)


def pet_scale_for(units: str) -> float:
    if units not in PET_SCALES:
        raise RecordError(f"PET units {units!r} have no storage scale (known: {sorted(PET_SCALES)})")
    return PET_SCALES[units]


def encode_pet(values: np.ndarray, units: str) -> tuple[np.ndarray, float, int]:
    """(uint16 stored, scale, number of clipped voxels) with value = stored * scale."""
    scale = pet_scale_for(units)
    r = np.asarray(values, dtype=np.float32) * np.float32(1.0 / scale)  # float32: a paper-size volume is 32 M voxels
    np.rint(r, out=r)
    clipped = int(np.count_nonzero((r < 0) | (r > _U16.max)))
    return np.clip(r, 0, _U16.max).astype(PET_DTYPE), scale, clipped


def decode_pet(stored: np.ndarray, scale: float) -> np.ndarray:
    return np.asarray(stored, dtype=np.float32) * np.float32(scale)


def precision(modality: str, units: str = "HU") -> float:
    """The largest |decoded - ingested| the encoding allows (half a storage step)."""
    return 0.5 if modality == "ct" else PET_SCALES[units] / 2


# --- TFDS features --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """What a builder config stores: its kind and the stored grid."""

    kind: str
    volume_shape: tuple[int, int, int] = (32, 64, 64)  # (D, H, W) of regions/study/vqa volumes, per comparison side
    slice_shape: tuple[int, int] = (64, 64)  # (H, W) of `slices`
    compress: bool = False  # zlib the volume bytes; ArrayRecord already zstd-compresses each record, so rarely useful

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"record kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.volume_shape) != 3 or min(self.volume_shape) < 1:
            raise ValueError(f"volume_shape must be three positive sizes, got {self.volume_shape}")
        if len(self.slice_shape) != 2 or min(self.slice_shape) < 1:
            raise ValueError(f"slice_shape must be two positive sizes, got {self.slice_shape}")

    @property
    def image_shape(self) -> tuple[int, ...]:
        if self.kind == "slices":
            return tuple(self.slice_shape)
        if self.kind == "comparison":
            return (2, *self.volume_shape)
        return tuple(self.volume_shape)


def _metadata_features(tfds) -> dict:
    f = tfds.features
    return {
        "study_id": f.Text(doc="salted pseudonym of the study (never a name, id or date)"),
        "sex": f.Text(doc="M, F or empty when unknown"),
        "age_years": f.Scalar(np.int32, doc="age in years, -1 when unknown"),
        "height_m": f.Scalar(np.float32, doc="height in metres, NaN when unknown"),
        "weight_kg": f.Scalar(np.float32, doc="weight in kg, NaN when unknown"),
        "year": f.Scalar(np.int32, doc="acquisition year (temporal split key)"),
        "month": f.Scalar(np.int32, doc="acquisition month 1-12 (temporal split key)"),
        "source": f.Text(doc="reader that ingested the study: release or dicom"),
    }


def _image_features(tfds, spec: RecordSpec) -> dict:
    f = tfds.features
    enc = f.Encoding.ZLIB if spec.compress else f.Encoding.BYTES
    shape = spec.image_shape
    ndim = 2 if spec.kind == "slices" else 3
    return {
        "ct": f.Tensor(shape=shape, dtype=CT_DTYPE, encoding=enc, doc=CT_DOC),
        "pet": f.Tensor(shape=shape, dtype=PET_DTYPE, encoding=enc, doc=PET_DOC),
        "pet_scale": f.Scalar(np.float32, doc="PET value = stored * pet_scale (see PET_DOC)"),
        "pet_units": f.Text(doc="SUVbw, BQML or raw"),
        "ct_clipped": f.Scalar(np.int32, doc="CT voxels clipped to the int16 range"),
        "pet_clipped": f.Scalar(np.int32, doc="PET voxels clipped to [0, 65535 * pet_scale]"),
        "spacing_mm": f.Tensor(shape=(ndim,), dtype=np.float32,
                               doc="stored voxel spacing (slice, row, column) in mm; nominal when the source had none"),
    }


def features(spec: RecordSpec):
    """The tfds.features.FeaturesDict of a config (TFDS imported lazily: readers of plain arrays never need it)."""
    import tensorflow_datasets as tfds

    f = tfds.features
    text = lambda doc: f.Text(doc=doc)  # noqa: E731
    out = {"id": text("unique record id: <study_id>/<part>"), **_metadata_features(tfds)}
    if spec.kind != "comparison":
        out.update(_image_features(tfds, spec))
    if spec.kind == "regions":
        out.update(region=text("head_neck, chest, abdomen_pelvis or whole_body"),
                   section=text("the report section paired with the region"),
                   findings=text("the region's findings (Vietnamese, NFC)"),
                   findings_en=text("the English translation of the findings, empty when absent"),
                   impression=text("the study's impression"),
                   slice_range=f.Tensor(shape=(2,), dtype=np.int32, doc="source CT slices [start, stop)"),
                   source_shape=f.Tensor(shape=(3,), dtype=np.int32, doc="native CT (D, H, W)"),
                   lesions=text("JSON list of the region's lesions (paper schema), empty when unknown"))
    elif spec.kind == "study":
        out.update(report=text("findings by region then impression, one text"),
                   report_json=text("the report as the release's JSON object"),
                   report_en=text("English report text, empty when absent"),
                   impression=text("the impression"),
                   regions=text("JSON {region: {slices: [start, stop], section}} of the source CT"),
                   source_shape=f.Tensor(shape=(3,), dtype=np.int32, doc="native CT (D, H, W)"),
                   lesions=text("JSON list of the study's lesions (paper schema), empty when unknown"))
    elif spec.kind == "slices":
        out.update(slice_index=f.Scalar(np.int32, doc="source CT slice index"),
                   num_slices=f.Scalar(np.int32, doc="slices in the source CT"),
                   regions=text("comma-separated regions whose slice range holds this slice"))
    elif spec.kind == "vqa":
        out.update(image=text("the record the conversation is about: <study_id>/<region> or <study_id>"),
                   region=text("region name, or 'study' for the whole study"),
                   conversation=text("LLaVA record JSON {id, image, conversations: [{from, value}]}"),
                   origin=text("release (vqa.jsonl) or generated (from lesion lists)"))
    elif spec.kind == "comparison":
        img = _image_features(tfds, spec)
        out.update(img)
        out.update(prior_id=text("study id of side 0 (the prior study)"),
                   current_id=text("study id of side 1 (the current study)"),
                   text=text("Vietnamese description of the differences, prior -> current"),
                   prior_lesions=text("JSON lesion list of the prior study"),
                   current_lesions=text("JSON lesion list of the current study"))
    return f.FeaturesDict(out)


def as_text(value) -> str:
    """TFDS data sources return Text features as bytes; everything downstream works on str."""
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def metadata_fields(study) -> dict:
    m = study.metadata
    nan = float("nan")
    return {"study_id": study.study_id, "sex": m.sex or "", "age_years": -1 if m.age_years is None else m.age_years,
            "height_m": nan if m.height_m is None else m.height_m,
            "weight_kg": nan if m.weight_kg is None else m.weight_kg,
            "year": m.year or 0, "month": m.month or 0, "source": study.source}


def image_fields(ct_values: np.ndarray, pet_values: np.ndarray, pet_units: str,
                 spacing_mm: Optional[tuple[float, ...]] = None) -> dict:
    ct, ct_clipped = encode_ct(ct_values)
    pet, scale, pet_clipped = encode_pet(pet_values, pet_units)
    ndim = ct.ndim if ct.ndim <= 3 else 3
    spacing = np.asarray(spacing_mm if spacing_mm is not None else (0.0,) * ndim, np.float32)
    return {"ct": ct, "pet": pet, "pet_scale": np.float32(scale), "pet_units": pet_units, "ct_clipped": ct_clipped,
            "pet_clipped": pet_clipped, "spacing_mm": spacing}
