"""The stage optimizers against torch's own: AdamW (LLaVA's) and Adam with L2 weight decay (the paper's Cosmos
fine-tuning), a few steps on the same weights and gradients, constant learning rate, no clipping."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxpetct.train.optimizer import ParamGroup, Schedule, make_optimizer

torch = pytest.importorskip("torch")


def _run_ours(optimizer: str, params: dict, grads: list[dict], lr: float, wd: float) -> dict:
    group_of = jax.tree.map(lambda _: "all", params)
    schedule = Schedule(peak_lr=lr, total_steps=100, warmup_fraction=0.0, final_fraction=1.0)
    tx = make_optimizer(params, group_of, (ParamGroup("all", ".*"),), schedule, weight_decay=wd, clip_norm=None,
                        optimizer=optimizer)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params


def _run_torch(cls, params: dict, grads: list[dict], lr: float, wd: float) -> dict:
    tensors = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
    # ours decays matrices only: the bias goes in a group without decay, as make_optimizer's mask does
    opt = cls([{"params": [tensors["kernel"]], "weight_decay": wd},
               {"params": [tensors["bias"]], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    for g in grads:
        for k, t in tensors.items():
            t.grad = torch.tensor(np.asarray(g[k]))
        opt.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_stage_optimizer_matches_torch(optimizer):
    rng = np.random.default_rng(0)
    params = {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
    grads = [{k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()} for _ in range(5)]
    lr, wd = 1e-2, 0.5  # a large decay, so L2 and decoupled decay differ visibly
    ours = _run_ours(optimizer, params, grads, lr, wd)
    ref = _run_torch(torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW, params, grads, lr, wd)
    other = _run_torch(torch.optim.AdamW if optimizer == "adam" else torch.optim.Adam, params, grads, lr, wd)
    for k in params:
        np.testing.assert_allclose(np.asarray(ours[k]), ref[k], rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(ours["kernel"]) - other["kernel"]).max() > 1e-3  # the two decays are told apart


def test_unknown_optimizer_is_refused():
    params = {"kernel": jnp.zeros((2, 2))}
    with pytest.raises(ValueError, match="adamw' or 'adam"):
        make_optimizer(params, {"kernel": "all"}, (ParamGroup("all", ".*"),), Schedule(peak_lr=1e-3, total_steps=10),
                       optimizer="sgd")
