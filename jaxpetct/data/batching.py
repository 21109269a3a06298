"""Examples -> fixed-shape batches (the VLM batch contract), and per-host batches -> global jax.Arrays.

Batch contract (what models/vlm.py and the train step consume):

    images          (B, C, D, H, W) float32   encoder input in [0, 1] (or [-1, 1])
    input_ids       (B, L) int32              pad id where attention_mask is False
    positions       (B, L) int32              cumsum(attention_mask) - 1, 0 on padding: RoPE positions that are
                                              right for right padding (training) and left padding (prompts)
    attention_mask  (B, L) bool               True on real tokens
    image_mask      (B, L) bool               True on the num_image_tokens slots of the visual tokens
    loss_mask       (B, L) float32            1.0 on answer tokens (and their EOS)
    meta            dict of (B,) numpy str    id, study_id, task, reference, [conversation], valid (bool)

L is the smallest length bucket that holds the longest example of the batch, so a run compiles the step once per
bucket, not once per length. The clip task (encoder pre-training) carries text_ids/text_mask instead of the
decoder fields; the lesion_map task carries lesion_map (B, T, h, w) float32 and no text; the volume task carries
volume_mask (B,) float32 (1 on real rows, 0 on filler rows) and no text. `meta` never enters a jitted function:
`split_meta` separates it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

DEFAULT_BUCKETS = (128, 256, 512, 1024, 2048)
# Fields with a token axis (axis 1), right-padded in training encodings: a batch may be padded further with zeros
# (no token, no loss) to agree with other hosts' length. Fill values of a row that carries nothing, where 0 is not.
TOKEN_FIELDS = ("input_ids", "positions", "attention_mask", "image_mask", "loss_mask", "text_ids", "text_mask")
EMPTY_ROW_VALUES = {"lesion_map": -1.0}  # -1 = no target (models/lesion_map.py)
_META_STR = ("id", "study_id", "task", "reference", "conversation")


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if n <= b:
            return int(b)
    raise ValueError(f"a sequence of {n} tokens exceeds the largest length bucket {max(buckets)}")


def positions_of(attention_mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(attention_mask, axis=-1) - 1, 0).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Collate:
    """Grain batch_fn: pad token fields to a bucket (right, or left for prompts), stack images, gather meta.

    `batch_size` with `pad_batch` fills a short final batch with empty rows (meta valid False), so evaluation
    keeps one compiled shape.
    """

    pad_id: int
    buckets: tuple = DEFAULT_BUCKETS
    pad_side: str = "right"
    batch_size: Optional[int] = None
    pad_batch: bool = False

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict:
        examples = list(examples)
        valid = [True] * len(examples)
        if self.pad_batch and self.batch_size and len(examples) < self.batch_size:
            filler = _empty_like(examples[0])
            valid += [False] * (self.batch_size - len(examples))
            examples += [filler] * (self.batch_size - len(examples))
        out: dict = {"images": np.stack([e["images"] for e in examples]).astype(np.float32)}
        if "lesion_map" in examples[0]:
            out["lesion_map"] = np.stack([e["lesion_map"] for e in examples]).astype(np.float32)
            out["meta"] = {"id": np.asarray([e["meta"].get("id", "") for e in examples], dtype=str),
                           "valid": np.asarray(valid, bool)}
            return out
        if "input_ids" not in examples[0] and "text_ids" not in examples[0]:  # the volume task: images only
            out["volume_mask"] = np.asarray(valid, np.float32)  # 0 on filler rows: no loss, not counted
            out["meta"] = {"id": np.asarray([e["meta"].get("id", "") for e in examples], dtype=str),
                           "valid": np.asarray(valid, bool)}
            return out
        key = "text_ids" if "text_ids" in examples[0] else "input_ids"
        longest = max(len(e[key]) for e in examples)
        length = bucket_length(max(longest, 1), self.buckets)
        if key == "text_ids":
            ids, mask = self._pad([e["text_ids"] for e in examples], length, self.pad_id, np.int32)
            out.update(text_ids=ids, text_mask=mask)
        else:
            ids, mask = self._pad([e["input_ids"] for e in examples], length, self.pad_id, np.int32)
            out.update(input_ids=ids, positions=positions_of(mask), attention_mask=mask,
                       image_mask=self._pad([e["image_mask"] for e in examples], length, False, bool)[0],
                       loss_mask=self._pad([e["loss_mask"] for e in examples], length, 0.0, np.float32)[0])
        meta = {k: np.asarray([e["meta"].get(k, "") for e in examples], dtype=str)
                for k in _META_STR if any(k in e["meta"] for e in examples)}  # a mixture may differ per row
        meta["valid"] = np.asarray(valid, bool)
        out["meta"] = meta
        return out

    def _pad(self, rows, length: int, value, dtype) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(rows), length), value, dtype=dtype)
        mask = np.zeros((len(rows), length), dtype=bool)
        for i, r in enumerate(rows):
            n = len(r)
            sl = slice(length - n, length) if self.pad_side == "left" else slice(0, n)
            out[i, sl] = r
            mask[i, sl] = True
        return out, mask


def _empty_like(example: Mapping[str, Any]) -> dict:
    out = {k: np.zeros((0,), v.dtype) for k, v in example.items() if k not in ("images", "meta", "lesion_map")}
    if "lesion_map" in example:  # -1 = no target: a filler row adds nothing to the lesion_map loss
        out["lesion_map"] = np.full_like(example["lesion_map"], -1.0)
    out["images"] = np.zeros_like(example["images"])
    out["meta"] = {k: "" for k in example["meta"]}
    return out


def split_meta(batch: Mapping[str, Any]) -> tuple[dict, dict]:
    """(arrays for the jitted step, metadata strings for logging/eval)."""
    arrays = {k: v for k, v in batch.items() if k != "meta"}
    return arrays, dict(batch.get("meta", {}))

