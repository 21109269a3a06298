"""Shared builders for the DICOM tests (tiny volumes with known geometry); holds no tests itself."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pydicom

from jaxpetct.studies.deid import pseudonymize
from jaxpetct.studies.study import Volume

SALT = "test-salt"
IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def pseudonym(study_uid: str) -> str:
    return pseudonymize(study_uid, SALT)


def rotation(seed: int) -> tuple[tuple[float, ...], ...]:
    """A random proper rotation (det +1): an oblique but orthonormal acquisition."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 2] = -q[:, 2]
    return tuple(map(tuple, q.tolist()))


def ct_volume(shape=(5, 8, 7), spacing=(2.5, 3.0, 3.5), origin=(-12.0, -15.0, -20.0), direction=IDENTITY,
              seed=0) -> Volume:
    data = np.random.default_rng(seed).integers(-1000, 2000, size=shape).astype(np.float32)
    return Volume(data=data, spacing_mm=spacing, units="HU", origin_mm=origin, direction=direction)


def pet_volume(shape=(4, 6, 6), spacing=(4.0, 4.5, 5.0), origin=(-14.0, -17.0, -22.0), direction=IDENTITY,
               seed=1) -> Volume:
    data = (np.random.default_rng(seed).random(shape) * 12.0).astype(np.float32)
    return Volume(data=data, spacing_mm=spacing, units="SUVbw", origin_mm=origin, direction=direction)


def constant_pet(value: float, units="BQML", **kw) -> Volume:
    vol = pet_volume(**kw)
    return dataclasses.replace(vol, data=np.full(vol.shape, value, np.float32), units=units)


def edit(path: pathlib.Path, fn) -> None:
    """Rewrite one DICOM file after `fn(ds)` changed its data set."""
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path, enforce_file_format=True)


def pet_quantum(vol: Volume) -> np.ndarray:
    """Per-slice quantisation step of the writer's int16 PET encoding (values are within half of it)."""
    peak = np.abs(np.asarray(vol.data, np.float64)).reshape(vol.shape[0], -1).max(axis=1)
    return peak / 32767.0


# ------------------------------------------------------------------------------------ corruptions
# Each takes (written study, rng) and damages it on disk; returns the files it touched. Bad ones are listed
# with the reason the reader must give (None: the reason depends on where the damage landed).
def _series(written, rng):
    return list(written.ct_files if rng.random() < 0.5 else written.pet_files)


def _edit_all(files, fn):
    for path in files:
        edit(path, fn)
    return list(files)


def gap(written, rng):
    files = _series(written, rng)
    victim = files[int(rng.integers(1, len(files) - 1))]
    victim.unlink()
    return [victim]


def duplicate_position(written, rng):
    files = _series(written, rng)
    k = int(rng.integers(0, len(files) - 1))
    other = pydicom.dcmread(files[k + 1], stop_before_pixels=True).ImagePositionPatient
    edit(files[k], lambda ds: setattr(ds, "ImagePositionPatient", list(other)))
    return [files[k]]


def tilt(written, rng):
    files = _series(written, rng)
    angle = float(rng.uniform(1.0, 20.0)) * (1 if rng.random() < 0.5 else -1)

    def shift(k):
        def fn(ds):
            row = np.asarray([float(v) for v in ds.ImageOrientationPatient[:3]])
            step = float(ds.SliceThickness)
            ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(ds.ImagePositionPatient, float)
                                       + row * k * step * np.tan(np.radians(angle))]
        return fn

    for k, path in enumerate(files):
        edit(path, shift(k))
    return files


def mixed_orientation(written, rng):
    files = _series(written, rng)
    victim = files[int(rng.integers(0, len(files)))]
    edit(victim, lambda ds: setattr(ds, "ImageOrientationPatient", ["1", "0", "0", "0", "0", "-1"]))
    return [victim]


def missing_tag(written, rng):
    files = _series(written, rng)
    victim = files[int(rng.integers(0, len(files)))]
    key = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData", "Rows"][
        int(rng.integers(0, 5))]
    edit(victim, lambda ds: ds.__delattr__(key))
    return [victim]


def missing_rescale(written, rng):
    files = _series(written, rng)
    victim = files[int(rng.integers(0, len(files)))]
    edit(victim, lambda ds: ds.__delattr__("RescaleSlope"))
    return [victim]


def ct_not_rescaled(written, rng):
    """Stored values read as if already HU: the intercept dropped from every CT slice (air lands near 0)."""
    return _edit_all(written.ct_files, lambda ds: setattr(ds, "RescaleIntercept", "1024"))


def pet_scaled_down(written, rng):
    """Every PET slope 10^4 too small: what kBq/ml labelled Bq/ml, or grams as kg, does to SUV."""
    return _edit_all(written.pet_files, lambda ds: setattr(ds, "RescaleSlope", f"{float(ds.RescaleSlope) * 1e-4:.6g}"))


def _pet_tag(key, value):
    def corrupt(written, rng):
        def fn(ds):
            target = ds.RadiopharmaceuticalInformationSequence[0] if key.startswith("Radionuclide") else ds
            if value is None:
                delattr(target, key)
            else:
                setattr(target, key, value)
        return _edit_all(written.pet_files, fn)
    return corrupt


def other_frame(written, rng):
    return _edit_all(written.pet_files, lambda ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.4.5.6.7"))


def far_pet(written, rng):
    def fn(ds):
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(ds.ImagePositionPatient, float) + [0, 0, 5000]]
    return _edit_all(written.pet_files, fn)


def no_pet(written, rng):
    for path in written.pet_files:
        path.unlink()
    return list(written.pet_files)


def mixed_modality_uid(written, rng):
    victim = written.pet_files[int(rng.integers(0, len(written.pet_files)))]
    edit(victim, lambda ds: setattr(ds, "SeriesInstanceUID", written.ct_series_uid))
    return [victim]


def truncate(written, rng):
    victim = list(written.files)[int(rng.integers(0, len(written.files)))]
    raw = victim.read_bytes()
    victim.write_bytes(raw[:int(len(raw) * rng.uniform(0.05, 0.98))])
    return [victim]


def garbage_file(written, rng):
    victim = list(written.files)[int(rng.integers(0, len(written.files)))]
    victim.write_bytes(rng.integers(0, 256, size=int(rng.integers(1, 4000)), dtype=np.uint8).tobytes())
    return [victim]


def header_garbage(written, rng):
    """Random bytes inside the header elements (never the pixel values, whose damage no reader can see)."""
    victim = list(written.files)[int(rng.integers(0, len(written.files)))]
    raw = bytearray(victim.read_bytes())
    pixels_at = raw.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    for _ in range(int(rng.integers(1, 6))):
        at = int(rng.integers(132, max(133, pixels_at)))
        raw[at:at + 4] = rng.integers(0, 256, size=4, dtype=np.uint8).tobytes()
    victim.write_bytes(bytes(raw))
    return [victim]


def extra_junk(written, rng):
    (written.root / "README.txt").write_text("export of 2019", encoding="utf-8")
    (written.root / "Thumbs.db").write_bytes(rng.integers(0, 256, size=300, dtype=np.uint8).tobytes())
    return []


def duplicate_copy(written, rng):
    src = list(written.files)[int(rng.integers(0, len(written.files)))]
    (written.root / "copy_of_image").write_bytes(src.read_bytes())
    return []


def reason_matches(reason: str, expected) -> bool:
    return any(e in reason for e in ((expected,) if isinstance(expected, str) else expected))


BAD = {  # name: (corruption, substring(s) of the reason, or None when it depends on where the damage landed)
    "gap": (gap, ("uneven slice spacing", "but NumberOfSlices is")),  # a 3-slice PET keeps 2: one step only
    "duplicate_position": (duplicate_position, "duplicated slice position"),
    "tilt": (tilt, "off the slice normal"),
    "mixed_orientation": (mixed_orientation, "mixed series: ImageOrientationPatient"),
    "missing_tag": (missing_tag, None),
    "missing_rescale": (missing_rescale, "mixed series: RescaleSlope"),
    "ct_not_rescaled": (ct_not_rescaled, "lowest CT value"),
    "pet_scaled_down": (pet_scaled_down, "PET SUVmax"),
    "units_cnts": (_pet_tag("Units", "CNTS"), "Units CNTS"),
    "decay_none": (_pet_tag("DecayCorrection", "NONE"), "DecayCorrection NONE"),
    "no_dose": (_pet_tag("RadionuclideTotalDose", None), "RadionuclideTotalDose"),
    "no_weight": (_pet_tag("PatientWeight", None), "PatientWeight"),
    "other_frame": (other_frame, "different FrameOfReferenceUIDs"),
    "far_pet": (far_pet, "do not overlap"),
    "no_pet": (no_pet, "no PET series"),
    "mixed_modality_uid": (mixed_modality_uid, None),
    "truncate": (truncate, None),
    "garbage_file": (garbage_file, None),
}
MAYBE = {"header_garbage": header_garbage}  # reported, or harmless (read back equal to the truth)
GOOD = {"none": lambda written, rng: [], "extra_junk": extra_junk, "duplicate_copy": duplicate_copy}
