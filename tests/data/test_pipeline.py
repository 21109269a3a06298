"""The Grain loader: multi-host sharding, determinism, exact resume, the batch contract, eval batches, global arrays."""
from __future__ import annotations

import pickle

import grain
import jax
import numpy as np
import pytest
from etils import epath

from jaxpetct.data import batching, pipeline
from jaxpetct.data.inputs import AugmentConfig, ImageConfig, TextConfig, ToModelInputs, physical
from jaxpetct.data.records import as_text
from jaxpetct.data.volume import ct_window, resize
from jaxpetct.text.report import nfc
from jaxpetct.text.tokenizer import load_tokenizer

IMG = ImageConfig(shape=(8, 16, 16))
TXT = TextConfig(max_length=512)
BUCKETS = (128, 256, 512)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("mistral-v1")


def cfg(**kw) -> pipeline.LoaderConfig:
    base = dict(batch_size=2, image=IMG, text=TXT, buckets=BUCKETS)
    base.update(kw)
    return pipeline.LoaderConfig(**base)


def source(built, kind="regions", split="train"):
    return pipeline.open_source(built[kind].dataset_dir, split)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if k == "meta":
                for m in x[k]:
                    np.testing.assert_array_equal(x[k][m], y[k][m])
            else:
                np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_host_shards_are_disjoint_and_complete(built, count):
    src = source(built, "regions", "train")
    everything = sorted(as_text(src[i]["id"]) for i in range(len(src)))
    for epochs in (1, 2):
        shards = []
        for index in range(count):
            ds = pipeline.records_dataset(src, cfg(num_epochs=epochs, seed=7), shard_index=index, shard_count=count)
            shards.append([as_text(ds[i]["id"]) for i in range(len(ds))])
        assert max(map(len, shards)) - min(map(len, shards)) <= cfg().batch_size
        flat = [x for s in shards for x in s]
        assert sorted(flat) == sorted(everything * epochs)  # complete, and each element once per epoch
        if epochs == 1:
            assert all(not set(a) & set(b) for i, a in enumerate(shards) for b in shards[i + 1:])  # disjoint
    # the full loader obeys the same split: one pass over every host, batch ids together = the split
    seen = []
    for index in range(count):
        ds = pipeline.make_dataset(src, "mistral-v1", cfg(num_epochs=1, drop_remainder=False, seed=7),
                                   shard_index=index, shard_count=count)
        seen += [i for b in ds for i in b["meta"]["id"]]
    assert sorted(seen) == everything


@pytest.mark.parametrize("count", [2, 3])
def test_hosts_batches_concatenate_to_the_one_host_batch(built, count):
    """Host p holds rows [p*B, (p+1)*B) of each global batch, decoded with the global element's seed: what a run
    trains on does not depend on how many hosts read it (instruction variants drawn per element included)."""
    src = source(built, "regions", "train")
    one = take(iter(pipeline.make_dataset(src, "mistral-v1", cfg(batch_size=2 * count, seed=5), shard_index=0,
                                          shard_count=1)), 3)
    hosts = [take(iter(pipeline.make_dataset(src, "mistral-v1", cfg(batch_size=2, seed=5), shard_index=i,
                                             shard_count=count)), 3) for i in range(count)]
    for k in range(3):
        ids = [x for h in hosts for x in h[k]["meta"]["id"]]
        assert ids == list(one[k]["meta"]["id"])
        np.testing.assert_array_equal(np.concatenate([h[k]["images"] for h in hosts]), one[k]["images"])
        for h, rows, mask in zip(hosts, np.split(one[k]["input_ids"], count), np.split(one[k]["attention_mask"], count)):
            n = h[k]["input_ids"].shape[1]  # a host's bucket may be shorter than the global batch's
            np.testing.assert_array_equal(h[k]["input_ids"], rows[:, :n])
            assert not mask[:, n:].any()  # past the host's bucket the one-host batch holds only padding


def test_seeded_loader_is_deterministic(built):
    src = source(built)
    a = take(iter(pipeline.make_dataset(src, "mistral-v1", cfg(seed=3), shard_index=0, shard_count=1)), 3)
    b = take(iter(pipeline.make_dataset(src, "mistral-v1", cfg(seed=3), shard_index=0, shard_count=1)), 3)
    c = take(iter(pipeline.make_dataset(src, "mistral-v1", cfg(seed=4), shard_index=0, shard_count=1)), 3)
    assert_same_batches(a, b)
    assert [list(x["meta"]["id"]) for x in a] != [list(x["meta"]["id"]) for x in c]


def test_restored_iterator_yields_the_same_next_batches(built, tmp_path):
    """Across an epoch boundary (12 examples, batch 2 -> 6 batches per epoch), with augmentation on."""
    src = source(built)
    config = cfg(seed=5, augment=AugmentConfig(enabled=True), text=TextConfig(max_length=512, paraphrase_prob=0.5))

    def fresh():
        return iter(pipeline.make_dataset(src, "mistral-v1", config, shard_index=1, shard_count=2))

    it = fresh()
    take(it, 2)
    state = it.get_state()
    handler = grain.checkpoint.CheckpointHandler()  # the Orbax handler train/checkpoint.py saves with
    handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(it))
    expected = take(it, 4)
    again = fresh()
    again.set_state(state)
    assert_same_batches(take(again, 4), expected)
    restored = handler.restore(epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(fresh()))
    assert_same_batches(take(restored, 4), expected)


def test_batch_contract_and_answer_only_loss(built, tok):
    batches = take(iter(pipeline.make_dataset(source(built), "mistral-v1", cfg(batch_size=3), shard_index=0,
                                              shard_count=1)), 3)
    for b in batches:
        n, length = b["input_ids"].shape
        assert length in BUCKETS and n == 3
        assert b["images"].shape == (3, 2, *IMG.shape) and b["images"].dtype == np.float32
        assert 0.0 <= b["images"].min() and b["images"].max() <= 1.0
        for k, dt in (("input_ids", np.int32), ("positions", np.int32), ("attention_mask", np.bool_),
                      ("image_mask", np.bool_), ("loss_mask", np.float32)):
            assert b[k].shape == (n, length) and b[k].dtype == dt, k
        np.testing.assert_array_equal(b["positions"], np.maximum(np.cumsum(b["attention_mask"], 1) - 1, 0))
        for i in range(n):
            real = b["attention_mask"][i]
            assert real[:real.sum()].all() and b["input_ids"][i][~real].tolist() == [tok.pad_id] * (~real).sum()
            assert b["image_mask"][i].sum() == TXT.num_image_tokens
            answer = b["input_ids"][i][b["loss_mask"][i] > 0]
            assert answer[-1] == tok.eos_id
            assert tok.decode(answer.tolist()) == nfc(b["meta"]["reference"][i])
            assert np.flatnonzero(b["image_mask"][i]).max() < np.flatnonzero(b["loss_mask"][i]).min()
        assert b["meta"]["valid"].all() and all(str(i).count("/") == 1 for i in b["meta"]["id"])
    arrays, meta = batching.split_meta(batches[0])
    assert "meta" not in arrays and "reference" in meta


def test_eval_batches_are_left_padded_prompts_covering_the_split_once(built, tok):
    src = source(built, "regions", "validation")
    ds = pipeline.make_dataset(src, "mistral-v1", pipeline.eval_config(batch_size=4, image=IMG, text=TXT,
                                                                        buckets=BUCKETS), shard_index=0, shard_count=1)
    batches = list(ds)
    ids = [i for b in batches for i, v in zip(b["meta"]["id"], b["meta"]["valid"]) if v]
    assert sorted(ids) == sorted(as_text(src[i]["id"]) for i in range(len(src)))
    assert all(b["input_ids"].shape[0] == 4 for b in batches)  # a short last batch is padded, not dropped
    assert not batches[-1]["meta"]["valid"].all()
    for b in batches:
        assert not b["loss_mask"].any()
        for i in np.flatnonzero(b["meta"]["valid"]):
            assert b["attention_mask"][i, -1]  # prompts end at the right edge
            prompt = b["input_ids"][i][b["attention_mask"][i]]
            assert prompt[0] == tok.bos_id and tok.decode(prompt.tolist()).rstrip().endswith("[/INST]")
            assert b["positions"][i, -1] == b["attention_mask"][i].sum() - 1


def test_vqa_comparison_and_clip_tasks(built, tok):
    vqa = next(iter(pipeline.make_dataset(source(built, "vqa"), "mistral-v1", cfg(task="vqa", batch_size=4),
                                          shard_index=0, shard_count=1)))
    import json

    for i in range(4):
        turns = json.loads(vqa["meta"]["conversation"][i])["conversations"]
        loss = vqa["loss_mask"][i] > 0
        segments = np.count_nonzero(loss[1:] & ~loss[:-1]) + int(loss[0])
        assert segments == sum(t["from"] == "gpt" for t in turns)  # every answer, and only answers, carry loss
    comp_src = source(built, "comparison")
    comp = next(iter(pipeline.make_dataset(comp_src, "mistral-v1", cfg(task="comparison", shuffle=False),
                                           shard_index=0, shard_count=1)))
    rec = comp_src[0]
    ct, _ = physical(rec)  # both sides along depth, prior first
    np.testing.assert_array_equal(ct[: rec["ct"].shape[1]], rec["ct"][0].astype(np.float32))
    np.testing.assert_allclose(comp["images"][0, 1], ct_window(resize(ct, IMG.shape)), atol=1e-6)
    assert comp["meta"]["reference"][0] == as_text(rec["text"])
    clip = next(iter(pipeline.make_dataset(source(built, "study"), "mistral-v1", cfg(task="clip"), shard_index=0,
                                           shard_count=1)))
    assert set(clip) == {"images", "text_ids", "text_mask", "meta"}
    for i in range(2):
        ids = clip["text_ids"][i][clip["text_mask"][i]]
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) <= TXT.max_length
        text, ref = tok.decode(ids.tolist()), nfc(clip["meta"]["reference"][i])
        assert text == ref if len(ids) < TXT.max_length else ref.startswith(text)  # cut to max_length, EOS kept


def test_transforms_pickle_for_worker_processes():
    t = ToModelInputs("report", "mistral-v1", IMG, AugmentConfig(enabled=True), TXT)
    assert pickle.loads(pickle.dumps(t)).text == TXT
    c = batching.Collate(0, BUCKETS)
    assert pickle.loads(pickle.dumps(c)) == c


def test_global_batch_on_a_mesh(built):
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from jaxpetct.parallel.batches import to_global

    b = next(iter(pipeline.make_dataset(source(built), "mistral-v1", cfg(batch_size=8), shard_index=0,
                                        shard_count=1)))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    arrays, _ = batching.split_meta(b)
    out = to_global(arrays, {k: NamedSharding(mesh, PartitionSpec("data")) for k in arrays})
    assert set(out) == {"images", "input_ids", "positions", "attention_mask", "image_mask", "loss_mask"}
    for k, v in out.items():
        assert v.shape == b[k].shape and v.dtype == b[k].dtype
        np.testing.assert_array_equal(np.asarray(v), b[k])
        assert len(v.addressable_shards) == 8 and v.addressable_shards[0].data.shape[0] == 1


def test_mixture_keeps_its_proportions_on_every_host(built):
    parts = [(source(built, "regions"), "report", 3.0), (source(built, "comparison"), "comparison", 1.0)]
    for index in range(2):
        ds = pipeline.make_mixture(parts, "mistral-v1", cfg(batch_size=4, seed=2), shard_index=index, shard_count=2)
        tasks = [t for b in take(iter(ds), 4) for t in b["meta"]["task"]]
        assert tasks.count("report") == 12 and tasks.count("comparison") == 4


def test_cached_records_give_the_same_batches_stay_within_budget_and_are_read_only(built):
    from jaxpetct.data import record_cache

    record_cache.clear()
    plain = source(built)
    path = built["regions"].dataset_dir
    one = len(pickle.dumps(plain[0]))  # about a record's bytes
    small = pipeline.open_source(path, "train", cache_bytes=3 * one)
    assert isinstance(small, record_cache.CachedSource) and len(small) == len(plain)
    for _ in range(2):  # a second epoch is served from memory where the first one cached
        for i in range(len(plain)):
            np.testing.assert_array_equal(small[i]["pet"], plain[i]["pet"])
    assert 0 < record_cache.cached_bytes() <= 3 * one  # the budget holds: later records are read each time
    with pytest.raises(ValueError, match="read-only"):
        small[0]["ct"][0, 0, 0] = 1  # a transform writing into a record fails instead of changing later epochs
    record_cache.clear()
    big = pipeline.open_source(path, "train", cache_bytes=2**30)
    a = take(iter(pipeline.make_dataset(big, "mistral-v1", cfg(seed=3, augment=AugmentConfig()), shard_index=0,
                                        shard_count=1)), 6)
    b = take(iter(pipeline.make_dataset(plain, "mistral-v1", cfg(seed=3, augment=AugmentConfig()), shard_index=0,
                                        shard_count=1)), 6)
    assert_same_batches(a, b)
    assert pickle.loads(pickle.dumps(big)).key == big.key  # worker processes get their own cache
    record_cache.clear()
