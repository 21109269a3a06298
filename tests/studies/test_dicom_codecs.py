"""Compressed DICOM pixel data: with the `dicom-codecs` extra a JPEG 2000 CT series reads exactly as its uncompressed
original; without any decoder the study is quarantined with one line naming the transfer syntax and the extra."""
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from jaxpetct.studies.dicom import read_dicom_folder
from jaxpetct.studies.dicom_writer import write_dicom_study

from tests.studies import test_dicom_support as sup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Every module through which pydicom can decode JPEG 2000 here: mapping them to None makes `import` fail, which is
# exactly what pydicom sees on a machine without the extra.
NO_DECODERS = ("pylibjpeg", "openjpeg", "libjpeg", "rle", "PIL", "gdcm", "jpeg_ls")


def _compress(files) -> None:
    for path in files:
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        ds.save_as(path, enforce_file_format=True)


def _study(root, compressed: bool):
    ct = sup.ct_volume(shape=(5, 36, 36), seed=3)  # JPEG 2000's default 6 resolutions need >= 32 pixels
    pet = sup.pet_volume(seed=4)
    written = write_dicom_study(root / "export", ct, pet, seed=7)
    if compressed:
        _compress(written.ct_files)
    return written


def test_jpeg2000_ct_series_reads_exactly_as_uncompressed(tmp_path):
    pytest.importorskip("openjpeg", reason="the dicom-codecs extra (pylibjpeg-openjpeg) is not installed")
    plain, packed = _study(tmp_path / "plain", False), _study(tmp_path / "packed", True)
    assert pydicom.dcmread(packed.ct_files[0]).file_meta.TransferSyntaxUID == JPEG2000Lossless
    a, b = read_dicom_folder(tmp_path / "plain", salt="s"), read_dicom_folder(tmp_path / "packed", salt="s")
    assert not a.errors and not b.errors and plain.study_uid == packed.study_uid
    np.testing.assert_array_equal(a.studies[0].ct.data, b.studies[0].ct.data)
    np.testing.assert_array_equal(a.studies[0].pet.data, b.studies[0].pet.data)


def test_without_decoders_a_compressed_study_is_one_line_and_the_others_build(tmp_path):
    pytest.importorskip("openjpeg", reason="writing the JPEG 2000 series needs pylibjpeg-openjpeg")
    from jaxpetct.studies import synthetic

    synthetic.write_cohort(str(tmp_path / "c"), n=8, seed=5, dicom=True)  # study_0000 is one of 3 in train
    root = tmp_path / "c" / "dicom"
    _compress(sorted(p for p in (root / "study_0000").rglob("CT*") if p.is_file()))
    code = ("import runpy, sys\n"
            f"for m in {NO_DECODERS!r}: sys.modules[m] = None\n"
            "sys.argv = ['jaxpetct.data'] + sys.argv[1:]\n"
            "runpy.run_module('jaxpetct.data', run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", code, "build", "--manual-dir", str(root), "--data-dir",
                          str(tmp_path / "data"), "--config", "study", "--volume-shape", "8", "16", "16",
                          "--salt", "s", "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-2000:]
    from jaxpetct.data.build_paths import read_quarantine

    [dataset] = [os.path.join(d, v) for d, _, _ in os.walk(tmp_path / "data") for v in os.listdir(d)
                 if os.path.isfile(os.path.join(d, v, "quarantine.jsonl"))] or [None]
    [bad] = read_quarantine(dataset)
    assert "transfer syntax JPEG 2000 Image Compression (Lossless Only)" in bad["reason"], bad
    assert "jaxpetct[dicom-codecs]" in bad["reason"] and bad["file"].startswith("study_0000/")
    counts = {w[0]: int(w[1]) for w in (line.split() for line in run.stdout.splitlines()) if w[-1:] == ["examples"]}
    assert counts == {"train": 2, "validation": 3, "test": 2}, run.stdout  # every other study was built
