"""Lesion linear probe: do the volumes, or the encoder's features, say whether a region's report has a lesion?

Why: report metrics mix language with image use, and a small decoder can write fluent reports with the image
ignored; a blank-volume baseline shows *that* the image is unused, not *where* the signal is lost. A probe asks
each stage directly. A logistic regression from pooled features to "the region's findings report a lesion"
(the record's extracted lesions) is fitted on the train split and scored on a held-out split:

* on the input volumes (PET maximum over a coarse block grid) it measures how much lesion signal the records
  hold at their grid: the ceiling for any model trained on them;
* on CT-ViT's output grid (maximum over coarse spatial blocks of each slab) it measures how much of that signal
  the encoder keeps. CT-CLIP evaluates its encoder the same way (linear probes on abnormality labels).

Features are standardised on the train split and the L2 strength is chosen by k-fold cross-validation on the
train split only, so the held-out numbers are honest. Pure numpy/scipy: no framework state, any model's
features can be probed.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import optimize, special, stats

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def pet_block_max(pet: np.ndarray, grid: Sequence[int] = (4, 4, 4)) -> np.ndarray:
    """(N, D, H, W) PET -> (N, prod(grid)): the maximum of each block of a (gd, gh, gw) grid over the volume
    (trailing slices/rows that do not fill a block are dropped). The maximum, not the mean: a lesion is a few hot
    voxels, which a block mean dilutes into the background."""
    n, d, h, w = pet.shape
    gd, gh, gw = grid
    bd, bh, bw = d // gd, h // gh, w // gw
    if min(bd, bh, bw) < 1:
        raise ValueError(f"volume {pet.shape[1:]} is smaller than the probe grid {tuple(grid)}")
    x = pet[:, : gd * bd, : gh * bh, : gw * bw].reshape(n, gd, bd, gh, bh, gw, bw)
    return x.max(axis=(2, 4, 6)).reshape(n, -1).astype(np.float32)


def token_block_max(tokens: np.ndarray, grid: Sequence[int] = (2, 2)) -> np.ndarray:
    """(N, T, h, w, d) encoder grid -> (N, T * gh * gw * d): per slab, the maximum of each feature over a coarse
    (gh, gw) spatial block grid; keeps the slab and coarse position, drops fine position (few examples)."""
    n, t, h, w, d = tokens.shape
    gh, gw = min(grid[0], h), min(grid[1], w)
    bh, bw = h // gh, w // gw
    x = tokens[:, :, : gh * bh, : gw * bw].reshape(n, t, gh, bh, gw, bw, d)
    return x.max(axis=(3, 5)).reshape(n, -1).astype(np.float32)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN with one class only."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = stats.rankdata(np.asarray(scores, np.float64))
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Weights (F + 1,) of L2-regularised logistic regression (bias last, unpenalised), by L-BFGS on the mean
    log loss + l2/2 |w|^2; x should be standardised."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n, f = x.shape

    def loss_grad(theta):
        z = x @ theta[:f] + theta[f]
        loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * theta[:f] @ theta[:f]
        r = (special.expit(z) - y) / n
        return loss, np.concatenate([x.T @ r + l2 * theta[:f], [r.sum()]])

    res = optimize.minimize(loss_grad, np.zeros(f + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x


def _scores(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64) @ theta[:-1] + theta[-1]


def _folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k folds with each class spread evenly over them (stratified), deterministic by seed."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        fold[idx] = np.arange(len(idx)) % k
    return [np.flatnonzero(fold == i) for i in range(k)]


def choose_l2(x: np.ndarray, y: np.ndarray, grid: Sequence[float] = L2_GRID, k: int = 5, seed: int = 0) -> float:
    """The L2 strength with the lowest k-fold cross-validated log loss on (x, y)."""
    k = max(2, min(k, int(min(np.bincount(y.astype(np.int64), minlength=2)))))
    folds = _folds(y, k, seed)
    best, best_loss = grid[0], math.inf
    for l2 in grid:
        total = 0.0
        for held in folds:
            keep = np.ones(len(y), bool)
            keep[held] = False
            mu, sd = _standardiser(x[keep])
            theta = fit_logistic((x[keep] - mu) / sd, y[keep], l2)
            z = _scores((x[held] - mu) / sd, theta)
            total += float(np.sum(np.logaddexp(0.0, z) - y[held] * z))
        if total < best_loss:
            best, best_loss = l2, total
    return best


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x.mean(0)
    sd = x.std(0)
    return mu, np.where(sd > 1e-6, sd, 1.0)


@dataclasses.dataclass
class ProbeSplit:
    """Features, lesion labels (0/1) and region names of one split."""

    features: np.ndarray
    labels: np.ndarray
    regions: np.ndarray


def probe(train: ProbeSplit, heldout: ProbeSplit, *, seed: int = 0) -> dict:
    """One probe per region (regions differ in anatomy and base rate): held-out accuracy and AUROC next to the
    majority-class accuracy a featureless model gets. A region whose train or held-out split holds a single
    class cannot be probed and says so."""
    out = {}
    for region in sorted(set(train.regions.tolist()) | set(heldout.regions.tolist())):
        tr, ho = train.regions == region, heldout.regions == region
        ytr, yho = train.labels[tr].astype(np.int64), heldout.labels[ho].astype(np.int64)
        row = {"n_train": int(tr.sum()), "n_heldout": int(ho.sum()),
               "heldout_positive_rate": float(yho.mean()) if ho.any() else None}
        if len(np.unique(ytr)) < 2 or len(np.unique(yho)) < 2:
            row["skipped"] = "train or held-out split has a single class (lesion always or never reported)"
            out[region] = row
            continue
        majority = int(ytr.mean() >= 0.5)
        l2 = choose_l2(train.features[tr], ytr, seed=seed)
        mu, sd = _standardiser(train.features[tr])
        theta = fit_logistic((train.features[tr] - mu) / sd, ytr, l2)
        z = _scores((heldout.features[ho] - mu) / sd, theta)
        row.update(majority_accuracy=float(np.mean(yho == majority)), accuracy=float(np.mean((z > 0) == (yho == 1))),
                   auroc=auroc(z, yho), l2=l2)
        out[region] = row
    return out
