"""Model weights handed from one stage to the next (align -> lora, encoder_pretrain -> VLM encoder).

A stage's checkpoints hold its *train state* (trainable/frozen split, optimizer moments), whose structure is the
stage's own. The next stage needs only the weights, possibly into a different model: LoRA adapters appear in the
`lora` stage, and only the CLIP model's `encoder/` (CT-ViT) goes on to the VLM. So every stage also writes its
final weights as a plain {path: array} tree, and loading maps paths by prefix and fills what it finds, leaving the
rest (e.g. fresh LoRA adapters) as initialised — and says which is which.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxpetct.models.lora import LoRAParam
from jaxpetct.train.optimizer import path_str

log = logging.getLogger(__name__)


def _flat(model: nnx.Module) -> dict[str, nnx.Variable]:
    state = nnx.state(model, nnx.Param)
    out = {}
    for path, var in nnx.to_flat_state(state):
        out[path_str(path)] = var
    return out


def save_weights(model: nnx.Module, directory: str | os.PathLike) -> str:
    """Write every parameter (not RNG state) as a flat {path: array} Orbax checkpoint; atomic (tmp + rename)."""
    directory = os.path.abspath(os.fspath(directory))
    tree = {k: v.get_value() for k, v in _flat(model).items()}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory, tree, force=True)
        ckptr.wait_until_finished()
    return directory


def load_weights(
    model: nnx.Module,
    directory: str | os.PathLike,
    *,
    prefix_map: Optional[Mapping[str, str]] = None,
    require: Optional[str] = None,
) -> dict:
    """Fill `model`'s parameters from a `save_weights` directory, in place, keeping each target's sharding.

    `prefix_map` renames source prefixes ({"vision/": "encoder/"}); sources whose mapped path the model lacks are
    ignored. `require` is a path prefix whose base (non-LoRA) parameters must all be found (e.g. "decoder/"), so a
    wrong directory fails loudly instead of silently training from scratch. Returns {"loaded": [...], "kept": [...]}.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no weights at {directory} (was the earlier stage run?)")
    prefix_map = dict(prefix_map or {})
    targets = _flat(model)
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(directory)
        tree_meta = getattr(meta, "item_metadata", meta)
        source_names = list(tree_meta.keys()) if hasattr(tree_meta, "keys") else list(dict(tree_meta))

        def mapped(name: str) -> str:
            for src, dst in prefix_map.items():
                if name.startswith(src):
                    return dst + name[len(src):]
            return name

        wanted = {n: mapped(n) for n in source_names if mapped(n) in targets}
        abstract = {
            n: jax.ShapeDtypeStruct(targets[m].get_value().shape, targets[m].get_value().dtype,
                                    sharding=getattr(targets[m].get_value(), "sharding", None))
            for n, m in wanted.items()
        }
        for n, m in wanted.items():
            src_shape = tuple(getattr(tree_meta[n], "shape", abstract[n].shape))
            if src_shape != abstract[n].shape:
                raise ValueError(f"{directory}: weight {n} has shape {src_shape}, the model's {m} is {abstract[n].shape}")
    restored = {}
    if abstract:  # only the wanted subset is read (partial restore), each array straight into its sharding
        with ocp.PyTreeCheckpointer() as reader:
            restored = reader.restore(directory, args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True))
    for n, m in wanted.items():
        targets[m].set_value(restored[n])
    loaded = sorted(wanted.values())
    kept = sorted(set(targets) - set(loaded))
    if require:
        missing = [k for k in kept if k.startswith(require) and not isinstance(targets[k], LoRAParam)]
        if missing:
            raise ValueError(f"{directory}: weights for {len(missing)} parameters under {require!r} are missing, "
                             f"e.g. {missing[:3]}")
    log.info("loaded %d parameters from %s; %d kept as initialised", len(loaded), directory, len(kept))
    return {"loaded": loaded, "kept": kept}


def weights_equal(a: nnx.Module, b: nnx.Module, prefix: str = "") -> bool:
    """Bit-for-bit equality of all parameters under `prefix` (used to prove frozen parts did not move)."""
    fa, fb = _flat(a), _flat(b)
    keys = [k for k in fa if k.startswith(prefix)]
    if sorted(keys) != sorted(k for k in fb if k.startswith(prefix)):
        return False
    return all(np.array_equal(np.asarray(fa[k].get_value()), np.asarray(fb[k].get_value())) for k in keys)
