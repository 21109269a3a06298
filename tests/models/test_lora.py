"""LoRA: zero-initialised adapters are neutral, merge/unmerge are exact, only adapters train, dropout follows
train/eval, and the merged export loads in transformers with the unmerged forward's logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from jaxpetct.models import lora
from jaxpetct.models.hf_io import export_decoder, load_decoder
from tests.models.hf_tiny import forward, hf_logits, padded_batch, save_hf


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lora_src")
    save_hf("qwen2_tied", directory, seed=6)
    return directory


def _randomise_adapters(model, seed=0):
    """Give every lora_b random values (fresh adapters are zero and would make every check trivial)."""
    state = nnx.state(model, lora.LoRAParam)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [0.05 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    nnx.update(model, jax.tree.unflatten(treedef, new))


def _logits(model, batch):
    ids, mask, positions = batch
    return forward(model, ids, mask, positions)


@pytest.mark.parametrize("scan", [False, True])
def test_merge_unmerge_and_merged_export(checkpoint, tmp_path, scan):
    batch = padded_batch()
    mask = batch[1]
    model = load_decoder(checkpoint, scan_layers=scan)
    base = _logits(model, batch)
    kernel_before = np.asarray(model.layers.self_attn.q_proj.kernel[...] if scan
                               else model.layers[1].self_attn.q_proj.kernel[...])
    lora.apply_lora(model, lora.LoRAConfig(rank=4, alpha=8.0, dropout=0.1), nnx.Rngs(params=1, dropout=2))
    model.eval()
    np.testing.assert_array_equal(_logits(model, batch), base)  # B = 0: neutral
    _randomise_adapters(model)
    adapted = _logits(model, batch)
    assert np.abs(adapted - base)[mask].max() > 1e-2

    out = export_decoder(model, tmp_path / "merged")  # merges on the fly, leaves the model untouched
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask, positions = batch
    assert np.abs(hf_logits(hf, ids, mask, positions) - adapted)[mask].max() <= 1e-4
    assert all(not d.lora.merged for _, d in lora.adapted_denses(model))

    lora.merge(model)
    assert np.abs(_logits(model, batch) - adapted)[mask].max() <= 1e-4  # W + BA rounded once vs two matmuls
    lora.unmerge(model)
    np.testing.assert_allclose(_logits(model, batch), adapted, atol=1e-4)
    kernel_after = np.asarray(model.layers.self_attn.q_proj.kernel[...] if scan
                              else model.layers[1].self_attn.q_proj.kernel[...])
    np.testing.assert_allclose(kernel_after, kernel_before, atol=1e-6)


def test_only_adapters_get_gradients_and_dropout_follows_train_eval(checkpoint):
    batch = padded_batch(length=10)
    ids, mask, positions = (jnp.asarray(a) for a in batch)
    model = load_decoder(checkpoint, scan_layers=True)
    cfg = lora.LoRAConfig(rank=4, alpha=16.0, dropout=0.5, targets=("q_proj", "v", "down"))
    lora.apply_lora(model, cfg, nnx.Rngs(params=1, dropout=2))
    _randomise_adapters(model)
    n_adapted = len(list(lora.adapted_denses(model)))
    assert n_adapted == 3  # stacked: one Dense per target, holding every layer
    assert model.layers.self_attn.q_proj.lora.lora_a[...].shape == (2, 64, 4)

    @nnx.jit
    def grads(model):
        def loss(m):
            logits, _ = m(ids, positions=positions, attention_mask=mask)
            return jnp.mean(jax.nn.logsumexp(logits, -1) * mask)
        return nnx.grad(loss, argnums=nnx.DiffState(0, lora.LoRAParam))(model)

    model.train()
    g = grads(model)
    flat = nnx.to_flat_state(g)
    assert flat and all(isinstance(v, lora.LoRAParam) for _, v in flat)
    assert {p[-1] for p, _ in flat} == {"lora_a", "lora_b"}
    assert all(np.abs(np.asarray(v.get_value())).max() > 0 for _, v in flat)

    call = nnx.jit(lambda m: m(ids, positions=positions, attention_mask=mask)[0])
    first, second = np.asarray(call(model)), np.asarray(call(model))
    assert np.abs(first - second).max() > 1e-4  # fresh dropout masks from the model's Rngs each call
    model.eval()
    e1, e2 = np.asarray(call(model)), np.asarray(call(model))
    np.testing.assert_array_equal(e1, e2)
    no_dropout = load_decoder(checkpoint, scan_layers=True)
    lora.apply_lora(no_dropout, lora.LoRAConfig(rank=4, alpha=16.0, dropout=0.0, targets=cfg.targets),
                    nnx.Rngs(params=1))
    nnx.update(no_dropout, nnx.state(model, lora.LoRAParam))
    np.testing.assert_allclose(np.asarray(call(no_dropout)), e1, atol=1e-6)
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        lora.LoRAConfig(targets=("qkv",))


@pytest.mark.parametrize("n_in,out", [(1, (24,)), (2, (3, 8))])
def test_adapter_gradients_equal_autodiff_of_the_plain_product(n_in, out):
    """The adapter's hand-written backward (A's gradient formed as (dh^T x)^T for XLA:CPU's dot layouts) against
    JAX's autodiff of scale * (x @ A) @ B, for one- and two-axis inputs (o_proj reads (heads, head_dim))."""
    in_dims = (20,) if n_in == 1 else (4, 5)
    kx, ka, kb, kg = jax.random.split(jax.random.key(3), 4)
    x = jax.random.normal(kx, (2, 7, *in_dims))
    a = jax.random.normal(ka, (*in_dims, 6))
    b = jax.random.normal(kb, (6, *out))
    g = jax.random.normal(kg, (2, 7, *out))

    def plain(x, a, b):
        h = jnp.tensordot(x, a, axes=n_in)
        return 2.5 * jnp.tensordot(h, b, axes=1)

    def adapter(x, a, b):
        return lora._low_rank(x, a, b, n_in, 2.5)

    want_y, want_vjp = jax.vjp(plain, x, a, b)
    got_y, got_vjp = jax.vjp(jax.jit(adapter), x, a, b)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.jit(got_vjp)(g), want_vjp(g)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    stacked = jax.vmap(adapter)(jnp.stack([x, x + 1]), jnp.stack([a, -a]), jnp.stack([b, b]))  # scanned layers
    np.testing.assert_allclose(stacked[1], plain(x + 1, -a, b), rtol=1e-4, atol=1e-4)
