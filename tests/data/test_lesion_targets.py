"""Lesion-centre maps: the table (pseudonymised keys, clear errors), token placement checked against the PET the
records hold, the lesion_map task through the Grain pipeline, and the weighted BCE."""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpetct.data import pipeline
from jaxpetct.data.inputs import ImageConfig, physical
from jaxpetct.data.lesion_targets import LesionTableError, lesion_map, read_lesion_table
from jaxpetct.data.records import as_text
from jaxpetct.data.volume import resize
from jaxpetct.models.lesion_map import weighted_bce
from jaxpetct.studies.synthetic import TRUTH
from tests.tfds_builder.cohort_fixtures import SALT

GRID = (4, 4, 4)  # tokens over the fixture's 16x32x32 records: 4x8x8-voxel blocks


@pytest.fixture(scope="module")
def table(cohort):
    return read_lesion_table(os.path.join(cohort.root, TRUTH), SALT)


def test_table_is_keyed_by_the_records_pseudonyms_and_keeps_only_centres(table, built, cohort):
    src = pipeline.open_source(built["regions"].dataset_dir, "train")
    assert {as_text(src[i]["study_id"]) for i in range(len(src))} <= set(table)
    with open(os.path.join(cohort.root, TRUTH), encoding="utf-8") as f:
        truth = [json.loads(line) for line in f if line.strip()]
    names = {t["name"] for t in truth}
    assert not names & set(table) and all(isinstance(c, tuple) and len(c) == 3 for v in table.values() for c in v)
    assert sum(len(v) for v in table.values()) == sum(len(t["lesions"]) for t in truth) > 0


def test_bad_tables_name_the_file_and_line(tmp_path):
    path = tmp_path / "lesions.jsonl"
    path.write_text('{"key": "a", "lesions": []}\n{"key": "b", "lesions": [{"ct_voxel": [1, 2]}]}\n')
    with pytest.raises(LesionTableError, match=r"lesions.jsonl, line 2: ValueError"):
        read_lesion_table(str(path), "s")
    path.write_text('{"lesions": []}\n')
    with pytest.raises(LesionTableError, match="line 1: needs 'key'"):
        read_lesion_table(str(path), "s")
    path.write_text('{"study_id": "x"}\n{"study_id": "x"}\n')
    with pytest.raises(LesionTableError, match="line 2: study listed twice"):
        read_lesion_table(str(path), "s")
    with pytest.raises(LesionTableError, match="no lesion table"):
        read_lesion_table(str(tmp_path / "absent.jsonl"), "s")


def test_placement_by_hand():
    rec = {"slice_range": np.asarray([10, 30]), "source_shape": np.asarray([100, 64, 64])}
    m = lesion_map(rec, [(10, 0, 63), (29, 32, 31), (30, 5, 5), (9, 5, 5)], (4, 4, 4))
    assert m.sum() == 2 and m[0, 0, 3] == 1 and m[3, 2, 1] == 1  # k=30 and k=9 are outside [10, 30)
    with pytest.raises(ValueError, match="record r1"):
        lesion_map({"id": b"r1", "slice_range": np.asarray([5, 5]), "source_shape": np.asarray([9, 9, 9])}, [],
                   (4, 4, 4))


def test_placement_by_the_encoders_own_slice_tokens():
    # 20 source slices resized to 16 input slices; Cosmos' causal frames: slice 0 alone, then groups of 8
    rec = {"slice_range": np.asarray([10, 30]), "source_shape": np.asarray([100, 64, 64])}
    tokens = (0,) + (1,) * 8 + (2,) * 7
    m = lesion_map(rec, [(10, 0, 0), (11, 0, 0), (21, 0, 0), (22, 0, 0)], (3, 4, 4), tokens)
    # source 11 -> input slice 0 (1 * 16 // 20), 21 -> 8, 22 -> 9: tokens 0, 0, 1, 2 (uniform thirds: 0, 0, 1, 1)
    assert m[:, 0, 0].tolist() == [1, 1, 1]
    assert lesion_map(rec, [(22, 0, 0)], (3, 4, 4))[:, 0, 0].tolist() == [0, 1, 0]


def test_marked_tokens_are_where_the_records_pet_is_hot(table, built):
    """Independent of the placement formula: the block maximum of the record's own PET (the encoder input grid)
    is far higher on tokens holding a lesion centre than on the record's other tokens."""
    marked, rest = [], []
    for split in ("train", "validation", "test"):
        src = pipeline.open_source(built["regions"].dataset_dir, split)
        for i in range(len(src)):
            rec = src[i]
            m = lesion_map(rec, table[as_text(rec["study_id"])], GRID)
            if not m.any():
                continue
            _, pet = physical(rec)
            pet = resize(pet, (16, 32, 32))
            block = pet.reshape(4, 4, 4, 8, 4, 8).max(axis=(1, 3, 5))
            marked += block[m > 0].tolist()
            rest.append(np.median(block[m == 0]))
    assert len(marked) >= 3
    assert np.median(marked) > 2.0 * np.median(rest)


def test_lesion_map_task_batches(built, table):
    src = pipeline.open_source(built["regions"].dataset_dir, "validation")
    config = pipeline.LoaderConfig(task="lesion_map", batch_size=4, image=ImageConfig(shape=(16, 32, 32)),
                                   shuffle=False, num_epochs=1, drop_remainder=False, pad_batch=True,
                                   lesion_table=table, lesion_grid=GRID)
    batches = list(pipeline.make_dataset(src, "mistral-v1", config, shard_index=0, shard_count=1))
    rows = sum(int(b["meta"]["valid"].sum()) for b in batches)
    assert rows == len(src)
    for b in batches:
        assert set(b) == {"images", "lesion_map", "meta"} and b["lesion_map"].shape == (4, *GRID)
        valid = b["meta"]["valid"]
        assert (b["lesion_map"][~valid] == -1).all() and set(np.unique(b["lesion_map"][valid])) <= {0.0, 1.0}
    first = src[0]
    np.testing.assert_array_equal(batches[0]["lesion_map"][0],
                                  lesion_map(first, table[as_text(first["study_id"])], GRID))
    missing = pipeline.LoaderConfig(**{**config.__dict__, "lesion_table": {}})
    with pytest.raises(ValueError, match=r"record .* is not in the lesion table"):
        next(iter(pipeline.make_dataset(src, "mistral-v1", missing, shard_index=0, shard_count=1)))


def test_weighted_bce_by_hand_and_ignores_filler_rows():
    logits = jnp.asarray([[0.3, -1.2], [2.0, 0.5]])
    targets = jnp.asarray([[1.0, 0.0], [-1.0, -1.0]])
    total, count = weighted_bce(logits, targets, pos_weight=5.0)
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    want = 5.0 * -np.log(sig(0.3)) - np.log(1.0 - sig(-1.2))
    assert float(count) == 2.0
    np.testing.assert_allclose(float(total), want, rtol=1e-6)
