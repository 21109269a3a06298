"""The Cosmos tokenizer as it will be fine-tuned: bfloat16 compute and weights, rematerialised blocks, the
L1 + 0.1 (1 - SSIM3D) reconstruction loss, one jitted value-and-grad step; and bf16 weights saved for diffusers.

Separate from test_cosmos.py because XLA's CPU backend takes ~20 s to compile the tokenizer's backward pass."""
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from jaxpetct.models import cosmos
from jaxpetct.models.ssim3d import reconstruction_loss
from tests.models.cosmos_tiny import params, random_vae, rel, torch_encode, video

diffusers = pytest.importorskip("diffusers", reason="diffusers (the test extra) is not installed: no reference")
torch = pytest.importorskip("torch", reason="torch (the test extra) is not installed: no reference")

pytestmark = pytest.mark.slow


def test_bfloat16_remat_training_step_differentiates_and_saves(tmp_path):
    cfg = cosmos.CosmosConfig.tiny()
    vae = random_vae(cfg, seed=4)
    vae.save_pretrained(tmp_path / "f32")
    model = cosmos.load_diffusers(tmp_path / "f32", dtype="bfloat16", param_dtype="bfloat16", remat=True)
    assert model.cfg.remat and model.encoder.conv_in.conv_s.kernel.get_value().dtype == np.dtype("bfloat16")
    x = video((1, 1, 16, 16, 3), seed=3)  # one frame: the loss needs border='reflect' (thinner than the window)

    def loss(model, x):
        z = model.encode(x)
        return reconstruction_loss(model.decode(z), x, border="reflect"), z

    (value, z), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model, x)
    assert z.dtype == np.dtype("bfloat16") and np.isfinite(float(value)) and float(value) > 0
    assert rel(z, torch_encode(vae, x)) < 5e-2  # bf16 weights and activations vs the float32 reference
    flat = {k: np.asarray(g.get_value(), np.float32) for k, g in nnx.to_flat_state(grads)}
    assert flat.keys() == params(model).keys()
    assert all(np.isfinite(g).all() for g in flat.values())
    # every tensor learns except those the maths freezes: with one frame the causal temporal attention's softmax is
    # over a single key (its q and k have no effect), and a key bias shifts all logits of a query alike (zero in
    # exact arithmetic, bf16 rounding noise here)
    zero = {k for k, g in flat.items() if not np.abs(g).max() > 0}
    assert zero == {k for k in flat if "temp_attentions" in k and k[-2] in ("to_q", "to_k")}
    scale = np.median([np.abs(g).max() for g in flat.values()])
    key_biases = {k for k in flat if k[-2] == "to_k" and k[-1] == "bias"} - zero
    assert key_biases and all(np.abs(flat[k]).max() < 1e-2 * scale for k in key_biases)

    out = cosmos.save_diffusers(model, tmp_path / "bf16")
    with safe_open(out / "diffusion_pytorch_model.safetensors", framework="numpy") as f:
        metadata_dtype = f.metadata()
    reloaded = diffusers.AutoencoderKLCosmos.from_pretrained(out, torch_dtype=torch.bfloat16)
    weight = reloaded.encoder.conv_in.conv_s.weight.detach()
    assert weight.dtype == torch.bfloat16 and metadata_dtype == {"format": "pt"}
    ours = model.encoder.conv_in.conv_s.kernel.get_value()
    np.testing.assert_array_equal(weight.float().permute(2, 3, 4, 1, 0).numpy(), np.asarray(ours, np.float32))
