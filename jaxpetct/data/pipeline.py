"""The Grain input pipeline: records on disk -> per-host batches, deterministic and resumable.

    data source (TFDS ArrayRecord, no TensorFlow) -> grain.MapDataset -> seeded global shuffle -> repeat
    -> ToModelInputs (decode, augment, tokenize; seeded per element of the global order)
    -> this host's rows of each global batch (`HostRows`) -> batch with length-bucket padding -> IterDataset
    -> multi-process prefetch

Shuffling happens before sharding, with the same seed on every host, so the hosts split one global order: within
each epoch their shards are disjoint and together complete, and every host sees a fresh mixture each epoch. Host
p of P holds rows [p*B, (p+1)*B) of each global batch of P*B, so the global batch does not depend on P.
Everything up to the batch is index-addressable (MapDataset), so the iterator's state is a position: Grain's
get_state/set_state (and grain.checkpoint's Orbax handler, used by train/checkpoint.py) make a resumed run see
exactly the batches it would have seen.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

import grain

from jaxpetct.data.batching import DEFAULT_BUCKETS, Collate
from jaxpetct.data.inputs import AugmentConfig, ImageConfig, TextConfig, ToModelInputs, tokenizer_for
from jaxpetct.data.record_cache import CachedSource



@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    task: str = "report"  # report | vqa | comparison | clip, lesion_map (encoder pre-training) | volume (tokenizer)
    train: bool = True  # False: prompt-only encoding, canonical instructions, no augmentation (evaluation)
    batch_size: int = 2  # per host
    seed: int = 0
    shuffle: bool = True
    num_epochs: Optional[int] = None  # None repeats forever
    drop_remainder: bool = True
    pad_batch: bool = False  # fill a short last batch with empty rows (meta valid False) instead of dropping it
    buckets: tuple = DEFAULT_BUCKETS
    image: ImageConfig = ImageConfig()
    augment: AugmentConfig = AugmentConfig()
    text: TextConfig = TextConfig()
    worker_count: int = 0  # Grain worker processes (0: in-process, as in tests)
    worker_buffer_size: int = 2  # batches each worker keeps ready
    read_threads: int = 2  # threads decoding ahead within a process
    read_buffer: int = 4  # batches read ahead within a process; Grain's default (500) would hold ~130 GB of
    #                       paper-size batches
    lesion_table: Optional[dict] = None  # lesion_map task: {study_id: lesion centres} (data/lesion_targets.py)
    lesion_grid: tuple = ()  # lesion_map task: the encoder's (T, h, w) token grid
    lesion_slice_tokens: tuple = ()  # lesion_map task: each input slice's token where not uniform (lesion_map)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.text.max_length > max(self.buckets):
            raise ValueError(f"text.max_length {self.text.max_length} exceeds the largest bucket {max(self.buckets)}")


def eval_config(**kw) -> LoaderConfig:
    """One pass in order, prompts left-padded, the last batch padded (not dropped)."""
    base = dict(train=False, shuffle=False, num_epochs=1, drop_remainder=False, pad_batch=True)
    base.update(kw)
    return LoaderConfig(**base)


def dataset_dir(data_dir: str, config: str, version: Optional[str] = None) -> str:
    """<data_dir>/vimed_pet/<config>/<version> (the newest version when not given)."""
    base = os.path.join(os.fspath(data_dir), "vimed_pet", config)
    if version is None:
        try:
            versions = sorted((v for v in os.listdir(base) if v[:1].isdigit() and "incomplete" not in v),
                              key=lambda v: tuple(int(p) for p in v.split(".")))
        except OSError:
            versions = []
        if not versions:
            raise FileNotFoundError(f"no built dataset vimed_pet/{config} under {data_dir}")
        version = versions[-1]
    return os.path.join(base, version)


def open_source(path: str, split: str, *, cache_bytes: int = 0):
    """A random-access source over one split of a built dataset directory (TFDS data source; no TensorFlow);
    with `cache_bytes` > 0 its parsed records stay in memory while the process's cache fits (record_cache.py)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(os.fspath(path))
    if split not in builder.info.splits:
        raise KeyError(f"split {split!r} not in {os.fspath(path)} (has {sorted(builder.info.splits)})")
    source = builder.as_data_source(split)
    if cache_bytes <= 0:
        return source
    # keyed by the build too (its dataset_info.json's time): a dataset rebuilt in place is not served stale records
    stamp = os.stat(os.path.join(os.fspath(path), "dataset_info.json")).st_mtime_ns
    return CachedSource(source, (f"{os.path.abspath(os.fspath(path))}@{stamp}", split), cache_bytes)


def shard_of(shard_index: Optional[int], shard_count: Optional[int]) -> tuple[int, int]:
    """This host's (index, count): explicit, or jax.process_index()/process_count()."""
    if shard_index is None or shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard index {shard_index} not in [0, {shard_count})")
    return shard_index, shard_count


class HostRows(grain.MapDataset):
    """Host `index` of `count`'s rows of each global batch: global batch k is elements [k*G, (k+1)*G) of the
    parent (G = count * batch_size) and this host holds the `index`-th block of `batch_size` of them.

    So the hosts' batches, concatenated in process order, are exactly the batch one host would read with batch
    size G: a run's data (and, with the per-element seeds of the global order, its augmentation and dropout rows)
    does not depend on how many hosts read it. The short last batch of a finite parent is split the same way
    (later hosts may get fewer rows, or none).
    """

    def __init__(self, parent: grain.MapDataset, index: int, count: int, batch_size: int):
        super().__init__(parent)
        self._index, self._count, self._batch = index, count, batch_size

    def __len__(self) -> int:
        n, g, b = len(self._parent), self._count * self._batch, self._batch
        full, rest = divmod(n, g)
        return full * b + min(b, max(0, rest - self._index * b))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.slice(i)
        k, j = divmod(i, self._batch)
        return self._parent[k * self._count * self._batch + self._index * self._batch + j]

    def __str__(self) -> str:
        return f"HostRows(index={self._index}, count={self._count}, batch_size={self._batch})"


def _global_order(source, config: LoaderConfig) -> grain.MapDataset:
    ds = grain.MapDataset.source(source)
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    return ds.repeat(config.num_epochs)


def records_dataset(source, config: LoaderConfig, *, shard_index: Optional[int] = None,
                    shard_count: Optional[int] = None) -> grain.MapDataset:
    """Shuffled, repeated and sharded records (no decoding yet): the part the sharding tests inspect."""
    index, count = shard_of(shard_index, shard_count)
    return HostRows(_global_order(source, config), index, count, config.batch_size)


def _examples(source, task: str, tokenizer: Any, config: LoaderConfig, shard_index, shard_count) -> grain.MapDataset:
    index, count = shard_of(shard_index, shard_count)
    transform = ToModelInputs(task, tokenizer, config.image, config.augment, config.text, train=config.train,
                              lesion_table=config.lesion_table, lesion_grid=config.lesion_grid,
                              lesion_slice_tokens=config.lesion_slice_tokens)
    # Random draws are seeded by the element's place in the global order, before the host split.
    ds = _global_order(source, config).random_map(transform, seed=config.seed)
    return HostRows(ds, index, count, config.batch_size)


def _batched(ds: grain.MapDataset, tokenizer: Any, config: LoaderConfig) -> grain.IterDataset:
    collate = Collate(tokenizer_for(tokenizer).pad_id, tuple(config.buckets), "right" if config.train else "left",
                      config.batch_size, config.pad_batch)
    read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.read_buffer)
    it = ds.batch(config.batch_size, drop_remainder=config.drop_remainder, batch_fn=collate).to_iter_dataset(read)
    if config.worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; a non-absl program never parsed them
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count,
                                                         per_worker_buffer_size=config.worker_buffer_size))
    return it


def make_dataset(source, tokenizer: Any, config: LoaderConfig = LoaderConfig(), *, shard_index: Optional[int] = None,
                 shard_count: Optional[int] = None) -> grain.IterDataset:
    """The whole pipeline over `source`; iterate it (iter(ds)) for a checkpointable iterator of batches.

    `tokenizer` is a spec ("mistral-v1", an HF folder) loaded once per worker process, or a Tokenizer object.
    """
    return _batched(_examples(source, config.task, tokenizer, config, shard_index, shard_count), tokenizer, config)


def make_mixture(parts: Sequence[tuple], tokenizer: Any, config: LoaderConfig = LoaderConfig(), *,
                 shard_index: Optional[int] = None, shard_count: Optional[int] = None) -> grain.IterDataset:
    """Several (source, task, weight) streams interleaved in proportion before batching.

    The paper's O+G+C: [(regions train, "report", w_o), (comparison train, "comparison", w_c)] with
    `config.text.paraphrase_prob` > 0 for G. Every part is shuffled, repeated and sharded on its own (so the
    proportions hold on every host); the mixture ends with its shortest part (set num_epochs=None to train).
    """
    if not parts:
        raise ValueError("a mixture needs at least one (source, task, weight) part")
    streams = [_examples(src, task, tokenizer, config, shard_index, shard_count) for src, task, _ in parts]
    return _batched(grain.MapDataset.mix(streams, [float(w) for _, _, w in parts]), tokenizer, config)


def make_loader(data_dir: str, config_name: str, split: str, tokenizer: Any, config: LoaderConfig = LoaderConfig(),
                **shard) -> grain.IterDataset:
    """make_dataset over <data_dir>/vimed_pet/<config_name>: e.g. ("regions", "train") for report generation,
    ("vqa", ...) for VQA, ("comparison", ...) for the C augmentation, ("study"/"regions", ...) with task "clip"."""
    return make_dataset(open_source(dataset_dir(data_dir, config_name), split), tokenizer, config, **shard)
