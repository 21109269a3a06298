"""The lesion probe of `--mode eval`: records -> features (input PET, trained encoder) -> jaxpetct.eval.probe.

I/O edge only: reads the `regions` records of the train split and of eval.split, decodes them as the model sees
them, and hands numpy features and report-derived labels to the pure probe.
"""
from __future__ import annotations

import functools
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jaxpetct.data.inputs import AugmentConfig, model_images
from jaxpetct.data.records import as_text
from jaxpetct.eval.probe import ProbeSplit, pet_block_max, probe, token_block_max
from jaxpetct.jobs import data as data_jobs
from jaxpetct.jobs import training
from jaxpetct.models.safetensors_io import host_array
from jaxpetct.parallel.batches import replicated_to_global

log = logging.getLogger(__name__)


def lesion_label(record: dict) -> int:
    """1 when the region's report lists a lesion (the record's extracted lesions), else 0; ValueError naming the
    record when its lesions field is not a JSON list."""
    try:
        lesions = json.loads(as_text(record["lesions"]) or "[]")
    except json.JSONDecodeError as e:
        raise ValueError(f"record {as_text(record['id'])}: lesions field is not JSON ({e})") from None
    if not isinstance(lesions, list):
        raise ValueError(f"record {as_text(record['id'])}: lesions field is not a JSON list")
    return int(len(lesions) > 0)


def _split_features(cfg, workdir: str, model, split: str, encode, progress: bool):
    """({feature set: (N, F)}, labels (N,), regions (N,), skipped records) of a split's regions records."""
    io = training.model_io(model)
    image_cfg = data_jobs.loader_config(cfg, io, train=False).image
    channels = tuple(cfg.data.image.channels)
    pet_channel = channels.index("pet") if "pet" in channels else None
    src = data_jobs.source(cfg, workdir, "regions", split)
    limit = min(len(src), int(cfg.eval.probe_max_examples) or len(src))
    batch = max(1, int(cfg.eval.batch_size))
    feats = {"encoder": []}
    if pet_channel is not None:
        feats["input_pet"] = []
    labels, regions, skipped = [], [], []
    for start in tqdm(range(0, limit, batch), desc=f"lesion probe ({split})", disable=not progress):
        records = []
        for i in range(start, min(start + batch, limit)):
            r = src[i]
            try:
                label = lesion_label(r)
            except ValueError as e:  # one bad record is left out and named; the probe goes on
                skipped.append(str(e))
                log.warning("lesion probe skips %s", e)
                continue
            records.append(r)
            labels.append(label)
            regions.append(as_text(r["region"]))
        if not records:
            continue
        images = np.stack([model_images(r, image_cfg, AugmentConfig(), None) for r in records])
        if pet_channel is not None:
            feats["input_pet"].append(pet_block_max(images[:, pet_channel]))
        feats["encoder"].append(token_block_max(np.asarray(encode(images), np.float32)))
    feats = {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in feats.items()}
    return feats, np.asarray(labels), np.asarray(regions), skipped


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _encode(graphdef, state, images):
    return nnx.merge(graphdef, state)(images).astype(jnp.float32)


def lesion_probe(cfg, workdir: str, model, *, mesh=None, progress: bool = True) -> dict:
    """{feature set: {region: accuracy, AUROC, majority accuracy, ...}} for the input PET and CT-ViT features.

    Every process reads the same records and gets every feature back (the encoder runs on the whole mesh, each
    device on its rows), so every host fits the same probe.
    """
    graphdef, state = nnx.split(model.encoder)
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]

    def run(images: np.ndarray) -> np.ndarray:
        n = len(images)
        if mesh is None:
            return np.asarray(_encode(graphdef, state, jnp.asarray(images)))
        rows = -(-n // shards) * shards  # the batch splits evenly over the mesh's batch axes
        padded = np.concatenate([images, np.zeros((rows - n, *images.shape[1:]), images.dtype)])
        with jax.set_mesh(mesh):
            out = _encode(graphdef, state, replicated_to_global({"images": padded}, mesh)["images"])
        return host_array(out)[:n]

    train_f, train_y, train_r, skipped = _split_features(cfg, workdir, model, "train", run, progress)
    # Scored on the evaluation split (eval.split), like the report metrics; the L2 strength is chosen by
    # cross-validation inside train, so no split is used twice.
    test_f, test_y, test_r, skipped_test = _split_features(cfg, workdir, model, cfg.eval.split, run, progress)
    if len(train_y) == 0 or len(test_y) == 0:
        return {"skipped": f"the train or {cfg.eval.split} split is empty", "skipped_records": skipped + skipped_test}
    out = {name: probe(ProbeSplit(train_f[name], train_y, train_r), ProbeSplit(test_f[name], test_y, test_r),
                       seed=int(cfg.seed)) for name in train_f}
    for name, rows in out.items():
        for region, row in rows.items():
            if "accuracy" in row:
                log.info("lesion probe %s %s: accuracy %.3f (majority %.3f), AUROC %.3f", name, region,
                         row["accuracy"], row["majority_accuracy"], row["auroc"])
    if skipped or skipped_test:
        out["skipped_records"] = skipped + skipped_test
    return out
