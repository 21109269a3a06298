"""One DICOM series -> one Volume with exact geometry, or a reason why not.

Slices are ordered by their position along the slice normal n = row cosine x column cosine
(ImagePositionPatient . n), never by file name or InstanceNumber, which exports scramble. The stack must be a
regular grid: one orientation, one image size, one pixel spacing, strictly increasing positions with even steps
(within `SPACING_REL_TOL`/`SPACING_ABS_TOL`) and steps along n (a gantry-tilted or sheared stack is refused:
it would need resampling to an orthogonal grid first). Copies of one instance (same SOPInstanceUID) are
dropped with a note; two different instances at one position are an error. A single slice takes its spacing
from SpacingBetweenSlices, else SliceThickness.

Values are the modality values of the standard: stored * RescaleSlope + RescaleIntercept per slice (a missing
pair means identity, as in pydicom's `apply_rescale`), i.e. HU for CT and the series' Units for PET.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from jaxpetct.studies.dicom_scan import quiet
from jaxpetct.studies.study import Volume
from jaxpetct.errors import UserError

DUPLICATE_TOL_MM = 1e-3
SPACING_REL_TOL = 0.01  # 1 % of the slice step ...
SPACING_ABS_TOL = 0.02  # ... or 0.02 mm, whichever is larger: positions are printed with limited decimals
TILT_TOL = 1e-3  # tan(angle) between a slice step and the slice normal (0.06 degrees)
ORIENTATION_TOL = 1e-4
COSINE_TOL = 1e-3


class SeriesError(UserError):
    """A series cannot become a volume; `file` is the relative path most responsible, `reason` says why."""

    def __init__(self, file: str, reason: str):
        self.file, self.reason = file, reason
        super().__init__(f"{file}: {reason}")


def _numbers(ds: Any, keyword: str, count: int, file: str) -> np.ndarray:
    with quiet():
        try:
            value = ds.get(keyword)
            arr = np.array([float(v) for v in (value if value is not None else [])], dtype=np.float64)
        except Exception:
            raise SeriesError(file, f"{keyword} is not numeric") from None
    if arr.size == 0:
        raise SeriesError(file, f"missing {keyword}")
    if arr.size != count or not np.all(np.isfinite(arr)):
        raise SeriesError(file, f"{keyword} must hold {count} finite numbers, it holds {arr.size}")
    return arr


def _number(ds: Any, keyword: str, file: str, default: Optional[float] = None) -> Optional[float]:
    with quiet():
        try:
            value = ds.get(keyword)
            if value is None or str(value).strip() == "":
                return default
            out = float(value)
        except Exception:
            raise SeriesError(file, f"{keyword} is not a number") from None
    if not math.isfinite(out):
        raise SeriesError(file, f"{keyword} is not finite")
    return out


def _check_image(ds: Any, file: str) -> tuple[int, int]:
    samples = _number(ds, "SamplesPerPixel", file, 1.0)
    if samples != 1:
        raise SeriesError(file, f"colour image (SamplesPerPixel {samples:g}): holds no HU or activity values")
    frames = _number(ds, "NumberOfFrames", file, 1.0)
    if frames is not None and frames > 1:
        raise SeriesError(file, f"multi-frame image ({frames:g} frames): enhanced multi-frame is not supported")
    rows, cols = _number(ds, "Rows", file), _number(ds, "Columns", file)
    if not rows or not cols or rows < 1 or cols < 1:
        raise SeriesError(file, "missing or zero Rows/Columns")
    if "PixelData" not in ds:
        raise SeriesError(file, "no PixelData (7FE0,0010)")
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        raise SeriesError(file, "Modality LUT Sequence instead of RescaleSlope/Intercept is not supported")
    return int(rows), int(cols)


def _unique_instances(items: Sequence[tuple[str, Any]], notes: list[str]) -> list[tuple[str, Any]]:
    """The (file, dataset) pairs without second copies of an instance (same SOPInstanceUID), each drop noted."""
    seen: dict[str, str] = {}
    unique = []
    for file, ds in items:
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if sop and sop in seen:
            notes.append(f"{file}: a second copy of the instance in {seen[sop]}; dropped")
            continue
        seen[sop] = file
        unique.append((file, ds))
    if not unique:
        raise SeriesError(".", "series has no images")
    return unique


def _orientation(first: Any, first_file: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, slice-normal) unit vectors of the first image; non-orthonormal cosines are refused."""
    iop0 = _numbers(first, "ImageOrientationPatient", 6, first_file)
    row_dir, col_dir = iop0[:3], iop0[3:]
    if (abs(np.linalg.norm(row_dir) - 1) > COSINE_TOL or abs(np.linalg.norm(col_dir) - 1) > COSINE_TOL
            or abs(float(row_dir @ col_dir)) > COSINE_TOL):
        raise SeriesError(first_file, "ImageOrientationPatient cosines are not two orthonormal vectors")
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    return row_dir, col_dir, normal / np.linalg.norm(normal)


def _positions(unique: Sequence[tuple[str, Any]], shape0: tuple[int, int], ps0: np.ndarray) -> np.ndarray:
    """ImagePositionPatient of every image, after checking that they all belong to one series (same size,
    orientation, pixel spacing and rescale tags as the first): a mixed series would silently misplace values."""
    first_file, first = unique[0]
    iop0 = _numbers(first, "ImageOrientationPatient", 6, first_file)
    rescale0 = ("RescaleSlope" in first, "RescaleIntercept" in first)
    positions = []
    for file, ds in unique:
        if ("RescaleSlope" in ds, "RescaleIntercept" in ds) != rescale0:
            raise SeriesError(file, f"mixed series: RescaleSlope/RescaleIntercept present in {first_file} "
                                    "but not here, or the reverse (values would silently differ)")
        if _check_image(ds, file) != shape0:
            raise SeriesError(file, f"mixed series: image size differs from {first_file}")
        if np.max(np.abs(_numbers(ds, "ImageOrientationPatient", 6, file) - iop0)) > ORIENTATION_TOL:
            raise SeriesError(file, f"mixed series: ImageOrientationPatient differs from {first_file}")
        if np.max(np.abs(_numbers(ds, "PixelSpacing", 2, file) - ps0)) > ORIENTATION_TOL * float(ps0.max()):
            raise SeriesError(file, f"mixed series: PixelSpacing differs from {first_file}")
        positions.append(_numbers(ds, "ImagePositionPatient", 3, file))
    return np.stack(positions)


def _slice_step(first: Any, files: Sequence[str], pos: np.ndarray, dist: np.ndarray, normal: np.ndarray) -> float:
    """The slice spacing in mm of positions sorted along the normal; duplicated positions, gaps and tilted
    (sheared) stacks are refused, since a regular grid is what every later stage assumes."""
    if len(files) == 1:
        step = _number(first, "SpacingBetweenSlices", files[0]) or _number(first, "SliceThickness", files[0])
        if not step or step <= 0:
            raise SeriesError(files[0], "a single slice without SpacingBetweenSlices or SliceThickness")
        return float(step)
    steps = np.diff(dist)
    k = int(np.argmin(steps))
    if steps[k] < DUPLICATE_TOL_MM:
        raise SeriesError(files[k + 1], f"duplicated slice position: {files[k]} lies at the same position "
                                        "along the slice normal")
    step = float((dist[-1] - dist[0]) / (len(files) - 1))
    usual = float(np.median(steps))  # the regular step; a gap is the outlier against it
    dev = np.abs(steps - usual)
    k = int(np.argmax(dev))
    if dev[k] > max(SPACING_ABS_TOL, SPACING_REL_TOL * usual):
        raise SeriesError(files[k + 1], f"uneven slice spacing: {steps[k]:.3f} mm from {files[k]}, "
                                        f"{usual:.3f} mm between most slices (missing slices or a gap)")
    deltas = np.diff(pos, axis=0)
    along = deltas @ normal
    across = np.linalg.norm(deltas - along[:, None] * normal[None], axis=1)
    k = int(np.argmax(across / along))
    if across[k] > max(SPACING_ABS_TOL, TILT_TOL * along[k]):
        angle = math.degrees(math.atan2(across[k], along[k]))
        raise SeriesError(files[k + 1], f"slices step {angle:.2f} degrees off the slice normal (gantry tilt "
                                        "or a sheared stack): resample to an orthogonal grid first")
    return step


def build_volume(items: Sequence[tuple[str, Any]], units: str) -> tuple[Volume, list[Any], list[str], list[str]]:
    """(volume, headers in slice order, files in slice order, notes) for one series' (file, dataset) pairs.

    The data sets' pixel data is consumed (dropped once converted) to keep one copy of a study in memory.
    """
    notes: list[str] = []
    unique = _unique_instances(items, notes)
    first_file, first = unique[0]
    shape0 = _check_image(first, first_file)
    _numbers(first, "ImageOrientationPatient", 6, first_file)  # read before PixelSpacing, as errors were ordered
    ps0 = _numbers(first, "PixelSpacing", 2, first_file)
    row_dir, col_dir, normal = _orientation(first, first_file)
    if np.any(ps0 <= 0):
        raise SeriesError(first_file, "PixelSpacing must be positive")
    pos = _positions(unique, shape0, ps0)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    files = [unique[i][0] for i in order]
    headers = [unique[i][1] for i in order]
    pos, dist = pos[order], dist[order]
    step = _slice_step(first, files, pos, dist, normal)

    data = np.empty((len(files),) + shape0, dtype=np.float32)
    for k, (file, ds) in enumerate(zip(files, headers)):
        data[k] = _modality_values(ds, file, shape0)
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    volume = Volume(data=data, spacing_mm=(float(step), float(ps0[0]), float(ps0[1])), units=units,  # type: ignore
                    origin_mm=tuple(float(v) for v in pos[0]),  # type: ignore[arg-type]
                    direction=tuple(tuple(float(v) for v in r) for r in direction), geometry_known=True)
    return volume, headers, files, notes


def _codec_hint(ds: Any) -> str:
    """For compressed pixel data: the transfer syntax (a UID's name, never patient data), and either where decoders
    come from or that the installed ones failed (a damaged stream, or a variant they do not handle)."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None or not getattr(uid, "is_compressed", False):
        return ""
    try:
        from pydicom.pixels import get_decoder

        installed = get_decoder(uid).is_available
    except (ImportError, NotImplementedError, ValueError):  # no decoder class at all for this syntax
        installed = False
    if installed:
        return f": transfer syntax {uid.name}; the installed decoders could not decode it (damaged or unsupported)"
    return (f": transfer syntax {uid.name}; no decoder for it is installed (pip install 'jaxpetct[dicom-codecs]', "
            "i.e. pylibjpeg with pylibjpeg-libjpeg and pylibjpeg-openjpeg, or python-gdcm)")


def _modality_values(ds: Any, file: str, shape: tuple[int, int]) -> np.ndarray:
    # Type 1 in the CT and PET Image modules (PS3.3 C.8.2.1, C.8.9.4): without them the stored integers are not HU
    # or activity (a CT read so had its air at +13 "HU"). Refused per slice, never defaulted to 1 and 0.
    slope = _number(ds, "RescaleSlope", file)
    intercept = _number(ds, "RescaleIntercept", file)
    for keyword, value in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        if value is None:
            raise SeriesError(file, f"{keyword} is missing or empty (required for CT and PET): the stored values "
                                    "cannot be turned into HU or activity")
    if slope == 0.0:
        raise SeriesError(file, "RescaleSlope is 0: every voxel would read the intercept")
    with quiet():
        try:
            stored = ds.pixel_array
        except Exception as exc:
            raise SeriesError(file, f"pixel data unreadable ({type(exc).__name__}){_codec_hint(ds)}") from None
    if stored.shape != shape:
        raise SeriesError(file, f"pixel data shape {stored.shape} does not match Rows/Columns {shape}")
    values = stored.astype(np.float64) * slope + intercept
    del ds[0x7FE00010]  # the raw bytes and pydicom's decoded copy would double a study's memory
    if hasattr(ds, "_pixel_array"):
        ds._pixel_array = None
    if not np.all(np.isfinite(values)):
        raise SeriesError(file, "non-finite pixel values")
    return values
