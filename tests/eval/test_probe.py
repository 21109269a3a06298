"""The lesion linear probe: AUROC against brute-force pair counting, block pooling by hand, a probe that finds a
planted hot spot and one that finds nothing in random labels (so it can fail)."""
import numpy as np
import pytest

from jaxpetct.eval.probe import (ProbeSplit, auroc, choose_l2, fit_logistic, pet_block_max, probe,
                                 token_block_max)


def test_auroc_equals_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.4
    pos, neg = scores[labels], scores[~labels]
    brute = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (len(pos) * len(neg))
    assert auroc(scores, labels) == pytest.approx(brute, abs=1e-12)
    assert np.isnan(auroc(scores, np.ones(200, bool)))


def test_pet_block_max_puts_a_hot_voxel_in_its_block():
    pet = np.zeros((2, 8, 8, 8), np.float32)
    pet[1, 5, 1, 6] = 3.0  # block (1, 0, 1) of a 2x2x2 grid
    f = pet_block_max(pet, (2, 2, 2))
    assert f.shape == (2, 8)
    assert f[0].max() == 0.0 and f[1].argmax() == np.ravel_multi_index((1, 0, 1), (2, 2, 2)) and f[1].max() == 3.0
    assert pet_block_max(np.zeros((1, 9, 8, 8)), (2, 2, 2)).shape == (1, 8)  # the 9th slice is dropped
    with pytest.raises(ValueError, match="smaller than the probe grid"):
        pet_block_max(np.zeros((1, 2, 8, 8)), (4, 2, 2))


def test_token_block_max_pools_space_per_slab():
    t = np.zeros((1, 3, 4, 4, 5), np.float32)
    t[0, 2, 3, 0, 4] = 7.0  # slab 2, block (1, 0), feature 4
    f = token_block_max(t, (2, 2))
    assert f.shape == (1, 3 * 2 * 2 * 5)
    assert f[0].reshape(3, 2, 2, 5)[2, 1, 0, 4] == 7.0 and f.sum() == 7.0


def test_fit_logistic_reaches_the_optimum():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6))
    y = (x @ rng.normal(size=6) + 0.5 * rng.normal(size=300) > 0).astype(float)
    l2 = 0.1
    th = fit_logistic(x, y, l2)
    p = 1 / (1 + np.exp(-(x @ th[:-1] + th[-1])))
    grad = np.concatenate([x.T @ (p - y) / len(y) + l2 * th[:-1], [np.mean(p - y)]])
    assert np.abs(grad).max() < 1e-4


def _volumes(n, rng, hot):
    """Noisy background with a fixed hot organ; positives get a small hot spot at a random place."""
    pet = rng.uniform(0.0, 0.2, (n, 16, 16, 16)).astype(np.float32)
    pet[:, 2:4, 6:10, 6:10] = 0.8  # an organ every volume has
    for i in np.flatnonzero(hot):
        d, h, w = rng.integers(8, 15), rng.integers(0, 15), rng.integers(0, 15)
        pet[i, d:d + 2, h:h + 2, w:w + 2] = 0.6
    return pet


def test_probe_finds_a_planted_lesion_and_not_random_labels():
    rng = np.random.default_rng(2)
    ytr, yva = rng.random(240) < 0.5, rng.random(120) < 0.5
    xtr, xva = pet_block_max(_volumes(240, rng, ytr)), pet_block_max(_volumes(120, rng, yva))
    rtr, rva = np.array(["chest"] * 240), np.array(["chest"] * 120)
    found = probe(ProbeSplit(xtr, ytr.astype(int), rtr), ProbeSplit(xva, yva.astype(int), rva))["chest"]
    assert found["accuracy"] > 0.9 and found["auroc"] > 0.95 and found["majority_accuracy"] < 0.7
    # The same features against labels unrelated to them: the probe must not invent signal.
    ztr, zva = rng.random(240) < 0.5, rng.random(120) < 0.5
    none = probe(ProbeSplit(xtr, ztr.astype(int), rtr), ProbeSplit(xva, zva.astype(int), rva))["chest"]
    assert abs(none["auroc"] - 0.5) < 0.15


def test_probe_skips_a_region_with_one_class_and_says_why():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 4))
    y = np.r_[np.zeros(20, int), rng.integers(0, 2, 20)]
    r = np.array(["head_neck"] * 20 + ["chest"] * 20)
    y[20:22] = [0, 1]
    out = probe(ProbeSplit(x, y, r), ProbeSplit(x, y, r))
    assert "single class" in out["head_neck"]["skipped"] and "accuracy" in out["chest"]


def test_choose_l2_prefers_strong_regularisation_on_noise():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(60, 40)), rng.integers(0, 2, 60)
    assert choose_l2(x, y) >= 1.0


def test_lesion_label_reads_the_record_and_names_a_bad_one():
    from jaxpetct.jobs.probe import lesion_label

    assert lesion_label({"id": b"s1/chest", "lesions": b'[{"type": "x"}]'}) == 1
    assert lesion_label({"id": b"s1/chest", "lesions": b"[]"}) == 0
    assert lesion_label({"id": b"s1/chest", "lesions": b""}) == 0
    with pytest.raises(ValueError, match="s2/chest: lesions field is not JSON"):
        lesion_label({"id": b"s2/chest", "lesions": b"[{"})
    with pytest.raises(ValueError, match="s3/chest: lesions field is not a JSON list"):
        lesion_label({"id": b"s3/chest", "lesions": b"{}"})
