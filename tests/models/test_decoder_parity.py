"""Our decoder against transformers' PyTorch Llama / Mistral / Qwen2 on the same weights and inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxpetct.models.hf_io import load_decoder
from jaxpetct.models.kvcache import init_cache
from tests.models.hf_tiny import VARIANTS, forward, hf_logits, padded_batch, save_hf

TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for variant in VARIANTS:
        directory = tmp_path_factory.mktemp(variant)
        out[variant] = (directory, save_hf(variant, directory))
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers_on_padded_batch(checkpoints, variant):
    directory, hf = checkpoints[variant]
    ids, mask, positions = padded_batch()
    ref = hf_logits(hf, ids, mask, positions)
    model = load_decoder(directory)
    ours = forward(model, ids, mask, positions)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    err = np.abs(ours - ref)[mask].max()
    assert err <= TOL, f"{variant}: max |dlogits| {err:.2e}"
    # Padding rows must not change real rows: row 0 (no padding) alone, without mask or positions, is the same.
    alone, cache = model(jnp.asarray(ids[:1]))
    assert cache is None and np.abs(np.asarray(alone) - ref[:1]).max() <= TOL


def test_sliding_window_and_llama3_scaling_are_really_active(checkpoints):
    """The parity above would be vacuous if the window or the RoPE rescaling never changed anything."""
    ids, mask, positions = padded_batch(length=20)
    for variant, override in (("mistral_window", dict(sliding_window=None)), ("llama3_rope", dict(rope_scaling=None))):
        directory, _ = checkpoints[variant]
        on = forward(load_decoder(directory), ids, mask, positions)
        off = forward(load_decoder(directory, **override), ids, mask, positions)
        assert np.abs(on - off)[mask].max() > 1e-2, variant


@pytest.mark.parametrize("variant", ["mistral_window", "qwen2_tied"])
def test_kv_cache_decode_equals_full_sequence_at_every_position(checkpoints, variant):
    directory, _ = checkpoints[variant]
    model = load_decoder(directory)
    ids, mask, positions = padded_batch(length=16)
    full = forward(model, ids, mask, positions)

    @jax.jit
    def step(state, tok, pos, valid, cache):
        m = nnx.merge(graphdef, state)
        return m(tok, positions=pos, attention_mask=valid, cache=cache)

    graphdef, state = nnx.split(model)
    cache = init_cache(model.cfg, ids.shape[0], ids.shape[1])
    errs = []
    for t in range(ids.shape[1]):  # one token at a time, padding included, as a left-padded prefill would see it
        sl = slice(t, t + 1)
        logits, cache = step(state, jnp.asarray(ids[:, sl]), jnp.asarray(positions[:, sl]), jnp.asarray(mask[:, sl]),
                             cache)
        real = mask[:, t]
        errs.append(np.abs(np.asarray(logits[:, 0]) - np.asarray(full[:, t]))[real].max(initial=0.0))
    assert int(cache.index) == ids.shape[1]
    np.testing.assert_array_equal(np.asarray(cache.lengths), mask.sum(1))
    assert max(errs) <= 1e-5, f"cache decode differs by {max(errs):.2e}"


def test_scan_layers_and_remat_give_the_same_logits_and_grads(checkpoints):
    """Python loop vs nnx.scan over stacked layers, and remat (nnx.remat inside the scan body) on top."""
    directory, _ = checkpoints["mistral_window"]
    ids, mask, positions = padded_batch(length=12)
    inputs = (jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask))

    @nnx.jit
    def run(model, ids, positions, mask):
        def loss(m):
            logits, _ = m(ids, positions=positions, attention_mask=mask)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 5] * mask), logits

        (value, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        return logits, value, grads

    def loss_and_grad(model):
        logits, value, grads = run(model, *inputs)
        flat = {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
        return np.asarray(logits), float(value), flat

    base_logits, base_loss, base_grads = loss_and_grad(load_decoder(directory))
    for overrides in (dict(scan_layers=True), dict(scan_layers=True, remat=True)):
        logits, value, grads = loss_and_grad(load_decoder(directory, **overrides))
        # Same math, but XLA may fuse a scanned body differently from unrolled layers: equal to float rounding.
        assert np.abs(logits - base_logits).max() <= 1e-5, (overrides, np.abs(logits - base_logits).max())
        assert abs(value - base_loss) <= 1e-6
        for path, g in base_grads.items():
            if overrides.get("scan_layers") and path[0] == "layers":
                g_other = grads[(path[0], *path[2:])][path[1]]
            else:
                g_other = grads[path]
            np.testing.assert_allclose(g_other, g, atol=1e-6, rtol=1e-5, err_msg=f"{overrides} {path}")


def test_bfloat16_compute_is_as_close_to_float32_as_transformers_own_bfloat16(checkpoints):
    """Mixed precision (bf16 weights and activations, float32 norms/softmax/logits) loses no more than PyTorch's."""
    directory, hf = checkpoints["qwen2_tied"]
    ids, mask, positions = padded_batch()
    ref = hf_logits(hf, ids, mask, positions)
    # from_pretrained in bf16 keeps RoPE frequencies in float32, as we do (a `.to()` would round them too).
    torch_bf16 = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).eval()
    hf_bf16 = hf_logits(torch_bf16, ids, mask, positions)
    ours = forward(load_decoder(directory, dtype="bfloat16", param_dtype="bfloat16"), ids, mask, positions)
    ours_err, torch_err = np.abs(ours - ref)[mask].max(), np.abs(hf_bf16 - ref)[mask].max()
    assert ours_err <= 1.5 * torch_err, (ours_err, torch_err)
