"""The physics gate: each bound holds at its edge and refuses just past it; the readers and `inspect` refuse a
study that breaks one, naming the file and the number."""
import json

import numpy as np
import pytest

from jaxpetct.studies import cohort, physics
from jaxpetct.studies.__main__ import main
from jaxpetct.studies.study import StudyError, Volume

from tests.studies.test_release import SALT, _manual_release

SUV_ENCODING = {"version": 1, "ct": {"units": "HU"}, "pet": {"units": "SUVbw", "scale": 0.001, "offset": 0.0}}


@pytest.mark.parametrize("key", sorted(physics.BOUNDS))
def test_each_bound_holds_at_its_edges_and_refuses_past_them(key):
    bound = physics.BOUNDS[key]
    assert physics.check(key, bound.low) == bound.low and physics.check(key, bound.high) == bound.high
    step = lambda v: max(abs(v) * 1e-6, 1e-9)  # noqa: E731
    for outside in (bound.low - step(bound.low), bound.high + step(bound.high), float("nan")):
        with pytest.raises(physics.PhysicsError, match=rf"^{bound.name} .* is outside the plausible"):
            physics.check(key, outside)


def _body_ct(shape=(6, 8, 8)) -> np.ndarray:
    ct = np.full(shape, -1000, np.int16)  # air around the body
    ct[:, 2:6, 2:6] = 40  # soft tissue
    ct[:, 3:5, 3:5] = 700  # bone
    return ct


def _body_pet(shape=(6, 4, 4), suvmax=8.0) -> np.ndarray:
    pet = np.zeros(shape, np.int16)
    pet[:, 1:3, 1:3] = 1500  # SUV 1.5 at scale 0.001
    pet[2, 1, 1] = round(suvmax * 1000)
    return pet


def _load(root):
    [ref] = cohort.list_studies(str(root))
    return cohort.load_study(ref, salt=SALT)


def test_a_physical_release_study_passes(tmp_path):
    study = _load(_manual_release(tmp_path, _body_ct(), _body_pet(), encoding=SUV_ENCODING))
    assert float(study.pet.data.max()) == pytest.approx(8.0)


@pytest.mark.parametrize("damage,file,number", [
    ("ct_offset", "CT/day_3_patient_7.npz", "lowest CT value 24 HU"),  # stored = HU + 1024, not rescaled
    ("ct_no_tissue", "CT/day_3_patient_7.npz", "highest CT value -1000 HU"),
    ("suv_grams", "PET/day_3_patient_7.npz", "PET SUVmax 0.008 g/ml"),  # weight in grams: 1000x too small
])
def test_an_impossible_release_study_is_refused_naming_file_and_number(tmp_path, damage, file, number):
    ct, pet = _body_ct(), _body_pet()
    if damage == "ct_offset":
        ct = ct + 1024
    elif damage == "ct_no_tissue":
        ct[:] = -1000
    else:
        pet = pet // 1000
        pet[2, 1, 1] = 8  # SUV 0.008
    with pytest.raises(StudyError) as err:
        _load(_manual_release(tmp_path, ct, pet, encoding=SUV_ENCODING))
    assert err.value.file.endswith(file) and err.value.reason.startswith(number)


def test_measured_spacing_is_gated_nominal_spacing_is_not(tmp_path):
    enc = json.loads(json.dumps(SUV_ENCODING))
    enc["ct"]["spacing_mm"] = [30.0, 0.9, 0.9]  # cm read as mm, three times over: refused
    with pytest.raises(StudyError, match="voxel spacing 30 mm is outside the plausible 0.1..20 mm"):
        _load(_manual_release(tmp_path / "a", _body_ct(), _body_pet(), encoding=enc))
    # Without encoding.json the 8-pixel test CT gets a nominal 62.5 mm pixel: not a measurement, not refused.
    assert not _load(_manual_release(tmp_path / "b", _body_ct(), _body_pet())).ct.geometry_known


def test_raw_pet_has_no_suv_to_gate_and_suv_pet_is_checked():
    ct = Volume(_body_ct().astype(np.float32), (3.0, 1.0, 1.0), "HU")
    raw = Volume(np.full((6, 4, 4), 0.001, np.float32), (3.0, 2.0, 2.0), "raw")
    physics.check_volumes(ct, raw)  # a vendor scale is not SUV: nothing to compare with
    physics.check_volumes(ct, Volume(_body_pet().astype(np.float32) / 1000, (3.0, 2.0, 2.0), "SUVbw"))
    with pytest.raises(physics.PhysicsError, match="PET SUVmax 0.9"):
        physics.check_volumes(ct, Volume(np.full((6, 4, 4), 0.9, np.float32), (3.0, 2.0, 2.0), "SUVbw"))
    with pytest.raises(physics.PhysicsError, match="non-finite"):
        physics.check_volumes(ct, Volume(np.full((6, 4, 4), np.nan, np.float32), (3.0, 2.0, 2.0), "SUVbw"))


def test_inspect_refuses_what_the_build_refuses(tmp_path, capsys):
    root = _manual_release(tmp_path, _body_ct() + 1024, _body_pet(), encoding=SUV_ENCODING)
    assert main(["inspect", str(root), "--patient", "patient_7", "--salt", "s"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CT/day_3_patient_7.npz: lowest CT value 24 HU is outside" in err[0]
    assert "patient_7" not in err[0].split("CT/")[0]  # the study is named by its pseudonym
