"""Batched generation from a VLM: image + prompt rows -> padded, bucketed, mesh-placed arrays -> jitted generation.

Two compiled programs per (batch, prompt-length bucket): the prompt embeddings (CT-ViT -> projector -> visual tokens
spliced into the text embeddings) and `jaxpetct.eval.generate` (prefill + `lax.while_loop` decode with the KV cache).
Prompts are left-padded to the smallest length bucket that holds the batch's longest one and the batch is always
filled to `batch_size` rows, so a whole split compiles at most once per bucket: rows of different length never
cause a recompile. On a mesh the batch axis is split over ('data', 'fsdp') (the rules table's 'batch'); the model
must already be placed (e.g. `jaxpetct.parallel.rules.init_sharded` / `place_state`). Every process passes the
same rows; each device receives only its slice, each process decodes only the volumes of its devices' rows (a
`LazyVolume` is read where it is needed), and the generated tokens are gathered back to every host.

Sampling is deterministic: batch `i` draws from `fold(seed, i)`, so a run with the same examples, order and batch
size repeats exactly (greedy decoding needs no seed at all).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxpetct.eval.generate import SamplingConfig, generate
from jaxpetct.models.safetensors_io import host_array
from jaxpetct.models.vlm import VLM
from jaxpetct.parallel.batches import replicated_to_global
from jaxpetct.parallel.rules import named_sharding
from jaxpetct.text.prompts import ALIASES
from jaxpetct.text.tokenizer import Tokenizer

BATCH_AXES = ("data", "fsdp")
VQA_HISTORY = ("reference", "generated")


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
    """Generation settings of an evaluation run; all of them are written into metrics.json.

    `vqa_history`: what earlier turns of a multi-turn conversation show as the assistant's answers when a later
    turn is asked. "reference" (default): the reference answers, so each answer is scored on its own question
    with a correct context (an early mistake does not spoil later turns, and all turns run as one batch);
    "generated": the model's own earlier answers, as in a live conversation (turns then run in sequence).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    length_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    template: str = "mistral"
    system: Optional[str] = None
    vqa_history: str = "reference"

    def __post_init__(self):
        if self.vqa_history not in VQA_HISTORY:
            raise ValueError(f"vqa_history must be one of {VQA_HISTORY}, got {self.vqa_history!r}")
        if self.batch_size < 1 or self.max_new_tokens < 1 or not self.length_buckets:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1 and length_buckets non-empty ({self})")
        object.__setattr__(self, "length_buckets", tuple(sorted(int(b) for b in self.length_buckets)))
        self.sampling  # validates temperature / top_k / top_p

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["length_buckets"] = list(self.length_buckets)
        out["greedy"] = self.temperature == 0.0
        return out


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; past the largest, the next multiple of it."""
    for b in buckets:
        if n <= b:
            return int(b)
    top = int(buckets[-1])
    return -(-n // top) * top


@dataclasses.dataclass(frozen=True)
class LazyVolume:
    """A volume read only where it is needed: in a multi-host evaluation every process walks the same prompts,
    but each decodes only the volumes of the batch rows its own devices hold."""

    shape: tuple  # (C, D, H, W)
    load: Callable[[], np.ndarray]  # -> float32 array of `shape`

    def __call__(self) -> np.ndarray:
        return self.load()


def volume_array(image: Union[np.ndarray, LazyVolume]) -> np.ndarray:
    return np.asarray(image() if isinstance(image, LazyVolume) else image, np.float32)


@dataclasses.dataclass(frozen=True)
class PromptRow:
    input_ids: np.ndarray  # (L,) int32, prompt-only encoding
    image_mask: np.ndarray  # (L,) bool, T positions
    image: Union[np.ndarray, LazyVolume]  # (C, D, H, W) float32


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prompt_embeds(graphdef, state, images, input_ids, image_mask):
    return nnx.merge(graphdef, state).prompt_embeds(images, input_ids, image_mask)


def stop_ids(tokenizer: Tokenizer, template: str) -> tuple[int, ...]:
    """Tokens that end an answer: EOS, plus <|im_end|> for ChatML templates."""
    ids = [tokenizer.eos_id]
    if ALIASES.get(template, template) == "chatml":
        end = tokenizer.special_id("<|im_end|>")
        if end is not None:
            ids.append(end)
    return tuple(ids)


class VLMGenerator:
    """`generate(rows, batch_index) -> [token ids per row]` (answer tokens without the stop token)."""

    def __init__(self, model: VLM, tokenizer: Tokenizer, decoding: DecodingConfig, mesh: Optional[Mesh] = None):
        self.tokenizer, self.decoding, self.mesh = tokenizer, decoding, mesh
        self.prefix_lm = bool(model.prefix_lm)
        self.graphdef, self.state = nnx.split(model)
        self.decoder = nnx.split(model.decoder)
        self.num_visual_tokens = model.num_visual_tokens
        self.input_shape = tuple(model.encoder.cfg.input_shape)
        self.eos = stop_ids(tokenizer, decoding.template)
        shards = 1 if mesh is None else math.prod(mesh.shape.get(a, 1) for a in BATCH_AXES)
        self.rows = -(-decoding.batch_size // shards) * shards  # the batch must split evenly over the mesh

    def _owned_rows(self, n: int) -> set[int]:
        """Rows of an n-row batch that this process's devices hold (every row in a single-process job)."""
        if self.mesh is None or jax.process_count() == 1:
            return set(range(n))
        sharding = named_sharding(("batch",), (n,), self.mesh)
        return {i for index in sharding.addressable_devices_indices_map((n,)).values()
                for i in range(*index[0].indices(n))}

    def arrays(self, rows: Sequence[PromptRow]) -> dict[str, np.ndarray]:
        """Host arrays of one batch: left padding to the bucket, filler rows (row 0's prompt, a blank volume) to
        `self.rows`. Volumes are read only for the rows this process's devices hold; the others stay zero."""
        if not 0 < len(rows) <= self.rows:
            raise ValueError(f"a batch holds 1..{self.rows} rows, got {len(rows)}")
        length = bucket_length(max(len(r.input_ids) for r in rows), self.decoding.length_buckets)
        n = self.rows
        ids = np.full((n, length), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((n, length), bool)
        image_mask = np.zeros((n, length), bool)
        images = np.zeros((n, *self.input_shape), np.float32)
        owned = self._owned_rows(n)
        for i in range(n):
            r = rows[i] if i < len(rows) else rows[0]
            k = len(r.input_ids)
            ids[i, length - k:] = r.input_ids
            mask[i, length - k:] = True
            image_mask[i, length - k:] = r.image_mask
            if i < len(rows) and i in owned:
                images[i] = volume_array(r.image)
        return {"input_ids": ids, "attention_mask": mask, "image_mask": image_mask, "images": images}

    def generate(self, rows: Sequence[PromptRow], batch_index: int) -> list[list[int]]:
        host = self.arrays(rows)
        d = self.decoding
        seed = (d.seed * 1_000_003 + batch_index) % (2**31 - 1)
        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            x = replicated_to_global(host, self.mesh) if self.mesh is not None else jax.tree.map(jnp.asarray, host)
            embeds = _prompt_embeds(self.graphdef, self.state, x["images"], x["input_ids"], x["image_mask"])
            out = generate(self.decoder, inputs_embeds=embeds, attention_mask=x["attention_mask"],
                           bidirectional_mask=x["attention_mask"] if self.prefix_lm else None,
                           max_new_tokens=d.max_new_tokens, sampling=d.sampling, eos_token_id=self.eos,
                           pad_token_id=self.tokenizer.pad_id, seed=seed, vocab_size=self.tokenizer.vocab_size)
        tokens, lengths = host_array(out.tokens), host_array(out.lengths)
        answers = []
        for i in range(len(rows)):
            ids = tokens[i, : lengths[i]].tolist()
            if ids and ids[-1] in self.eos:
                ids = ids[:-1]
            answers.append(ids)
        return answers

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids).strip()
