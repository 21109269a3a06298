"""Generation: greedy tokens equal transformers' `generate`, the jitted loop equals step-by-step decoding, EOS and
sampling behave as specified."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxpetct.eval.generate import SamplingConfig, decode_step, generate, prefill, sample_logits
from jaxpetct.models.hf_io import load_decoder
from tests.models.hf_tiny import padded_batch, save_hf
from flax import nnx

NEW = 32


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama_gen")
    return directory, save_hf("llama", directory, seed=1)


def _hf_greedy(hf, ids, mask, n=NEW):
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                          max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, ids.shape[1]:].numpy()


@pytest.mark.parametrize("variant", ["llama", "mistral_window", "qwen2_tied"])
def test_greedy_generation_equals_transformers(tmp_path, variant, llama):
    if variant == "llama":
        directory, hf = llama
    else:
        directory, hf = tmp_path, save_hf(variant, tmp_path, seed=1)
    ids, mask, _ = padded_batch(batch=2, length=10, seed=3)
    ref = _hf_greedy(hf, ids, mask)
    out = generate(load_decoder(directory), input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                   max_new_tokens=NEW)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    np.testing.assert_array_equal(np.asarray(out.lengths), [NEW, NEW])
    assert len(np.unique(ref)) > 8, "degenerate reference: the comparison would prove little"


def test_while_loop_equals_step_by_step_decoding_and_embeds_prompt(llama):
    directory, _ = llama
    model = load_decoder(directory, scan_layers=True)
    ids, mask, _ = padded_batch(batch=3, length=9, seed=5)
    out = generate(model, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), max_new_tokens=12)

    graphdef, state = nnx.split(model)
    logits, cache, pos = prefill(graphdef, state, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                 max_len=ids.shape[1] + 12)
    steps = []
    for _ in range(12):
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        steps.append(np.asarray(tok))
        logits, cache = decode_step(graphdef, state, tok, pos, cache)
        pos = pos + 1
    np.testing.assert_array_equal(np.asarray(out.tokens), np.stack(steps, axis=1))

    embeds = model.embed(jnp.asarray(ids))
    from_embeds = generate(model, inputs_embeds=embeds, attention_mask=jnp.asarray(mask), max_new_tokens=12)
    np.testing.assert_array_equal(np.asarray(from_embeds.tokens), np.asarray(out.tokens))


def test_each_row_stops_at_its_own_eos(llama):
    directory, _ = llama
    model = load_decoder(directory)
    ids, mask, _ = padded_batch(batch=2, length=10, seed=3)
    free = np.asarray(generate(model, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                               max_new_tokens=NEW).tokens)
    eos = int(free[0, 6])  # row 0 meets this token at step 6 at the latest
    stop0 = int(np.argmax(free[0] == eos))
    out = generate(model, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), max_new_tokens=NEW,
                   eos_token_id=[eos, 255], pad_token_id=0)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    assert lengths[0] == stop0 + 1
    np.testing.assert_array_equal(tokens[0, : stop0 + 1], free[0, : stop0 + 1])
    assert (tokens[0, stop0 + 1:] == 0).all()
    hits1 = np.flatnonzero(np.isin(free[1], [eos, 255]))
    stop1 = hits1[0] if hits1.size else NEW - 1
    np.testing.assert_array_equal(tokens[1, : stop1 + 1], free[1, : stop1 + 1])
    assert lengths[1] == (stop1 + 1 if hits1.size else NEW)


def test_sampling_is_seeded_and_filters_match_their_definitions(llama):
    directory, _ = llama
    model = load_decoder(directory)
    ids, mask, _ = padded_batch(batch=2, length=10, seed=3)
    run = lambda s, seed: np.asarray(generate(model, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask),  # noqa: E731
                                              max_new_tokens=8, sampling=s, seed=seed).tokens)
    warm = SamplingConfig(temperature=1.5)
    np.testing.assert_array_equal(run(warm, 7), run(warm, 7))
    assert (run(warm, 7) != run(warm, 8)).any()

    # top_k=1 and a vanishing top_p leave only the argmax.
    wide = jax.random.normal(jax.random.key(1), (64, 256)) * 3
    argmax = np.asarray(jnp.argmax(wide, -1))
    for s in (SamplingConfig(temperature=1.0, top_k=1), SamplingConfig(temperature=1.0, top_p=1e-6)):
        np.testing.assert_array_equal(np.asarray(sample_logits(jax.random.key(2), wide, s)), argmax)

    # Empirical frequencies of sample_logits against the distributions the filters define.
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]], jnp.float32))
    keys = jax.random.split(jax.random.key(0), 20000)

    def freq(s):
        draws = jax.vmap(lambda k: sample_logits(k, logits, s)[0])(keys)
        return np.bincount(np.asarray(draws), minlength=4) / len(keys)

    np.testing.assert_allclose(freq(SamplingConfig(temperature=1.0)), [0.5, 0.3, 0.15, 0.05], atol=0.015)
    p2 = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
    np.testing.assert_allclose(freq(SamplingConfig(temperature=0.5)), p2 / p2.sum(), atol=0.015)
    np.testing.assert_allclose(freq(SamplingConfig(temperature=1.0, top_k=2)), [0.625, 0.375, 0, 0], atol=0.015)
    # top_p=0.7: the smallest set with mass >= 0.7 is {0.5, 0.3}
    np.testing.assert_allclose(freq(SamplingConfig(temperature=1.0, top_p=0.7)), [0.625, 0.375, 0, 0], atol=0.015)
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0.0)


def test_ids_beyond_the_tokenizer_are_never_drawn(llama):
    """A model whose embedding table is larger than its tokenizer (the corpus tokenizer) must not emit an id the
    tokenizer cannot decode; below the limit greedy decoding picks what it picked before."""
    directory, _ = llama
    model = load_decoder(directory)
    ids, mask, _ = padded_batch(batch=2, length=10, seed=3)
    free = np.asarray(generate(model, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                               max_new_tokens=NEW).tokens)
    limit = int(np.median(free))  # about half of the freely drawn ids lie at or above it
    assert (free >= limit).any()
    out = np.asarray(generate(model, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                              max_new_tokens=NEW, vocab_size=limit).tokens)
    assert (out < limit).all()
    first_free = free[:, 0]
    np.testing.assert_array_equal(out[first_free < limit, 0], first_free[first_free < limit])
