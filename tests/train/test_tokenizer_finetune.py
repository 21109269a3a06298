"""The Cosmos rows' stage 1, `tokenizer_finetune`, on the tiny synthetic cohort: the whole autoencoder trains on
the region volumes (no text), the loss falls and the validation PSNR and SSIM rise over a few dozen steps, and the
VLM stage after it starts from exactly those weights, frozen."""
import numpy as np
import pytest

from jaxpetct.config import stage
from jaxpetct.errors import ConfigError
from jaxpetct.jobs import data as data_jobs
from jaxpetct.jobs import training
from jaxpetct.train.writers import read_metrics
from tests.train.test_stages import changed, flat, one_device, trained


def cosmos_config(make_cfg, workdir):
    cfg = make_cfg(workdir)
    cfg.model.encoder = dict(preset="cosmos_tiny", hf_dir="", channels=2, depth=16, height=32, width=32)
    cfg.model.projector.update(dict(pool=1, pool_op="mean", features="all"))
    cfg.order = ("tokenizer_finetune", "align")
    cfg.stages.tokenizer_finetune = stage(36, peak_lr=2e-3, weight_decay=1e-5, warmup_fraction=0.0, log_every=1,
                                          save_every=36, eval_every=0, best_metric="")
    return cfg


def test_tokenizer_finetune_learns_to_reconstruct_and_hands_cosmos_to_the_vlm(built, tmp_path):
    _, make_cfg = built
    cfg = cosmos_config(make_cfg, tmp_path)
    mesh = one_device()
    assert training.stage_task(cfg, "tokenizer_finetune")[1] == "volume"
    assert data_jobs.num_train_examples(cfg, str(tmp_path), "volume") == len(
        data_jobs.source(cfg, str(tmp_path), "regions", "train"))
    start = flat(training.build_stage_model(cfg, "tokenizer_finetune", mesh=mesh))
    out = training.train(cfg, str(tmp_path), mesh=mesh, stages=["tokenizer_finetune"], progress=False)
    summary = out["tokenizer_finetune"]
    assert summary["steps"] == 36
    before, after = summary["initial"], summary["final"]
    print(f"tokenizer_finetune: val PSNR {before['val_psnr']:.2f} -> {after['val_psnr']:.2f} dB, SSIM "
          f"{before['val_ssim']:.3f} -> {after['val_ssim']:.3f}, loss {before['val_loss']:.3f} -> {after['val_loss']:.3f}")
    assert after["val_loss"] < before["val_loss"] and after["val_psnr"] > before["val_psnr"] + 3.0
    assert after["val_ssim"] > before["val_ssim"]
    losses = [m["loss"] for m in read_metrics(str(tmp_path / "tokenizer_finetune" / "metrics.jsonl")) if "loss" in m]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    weights = trained(cfg, tmp_path, "tokenizer_finetune")
    moved = changed(start, weights)
    assert any(k.startswith("encoder/tokenizer/decoder/") for k in moved)
    assert any(k.startswith("encoder/tokenizer/encoder/") for k in moved)

    vlm = training.build_stage_model(cfg, "align", mesh=mesh)
    loaded = training.load_previous(vlm, cfg, str(tmp_path), "align")
    enc = {k: v for k, v in flat(vlm).items() if k.startswith("encoder/")}
    assert enc.keys() == weights.keys() and all(np.array_equal(enc[k], weights[k]) for k in enc)
    assert set(loaded["loaded"]) == set(enc)
    io = training.model_io(vlm)
    assert io.input_shape == (2, 16, 32, 32) and io.num_visual_tokens == 3
    assert not any("encoder" in g.name for g in training.trainable_groups(cfg, "align"))  # frozen, as the paper


def test_a_ct_vit_config_cannot_run_tokenizer_finetune(built, tmp_path):
    _, make_cfg = built
    cfg = make_cfg(tmp_path)
    cfg.stages.tokenizer_finetune = stage(2, peak_lr=1e-4)
    cfg.order = ("tokenizer_finetune", "align")
    with pytest.raises(ConfigError, match="fine-tunes a Cosmos encoder"):
        training.build_stage_model(cfg, "tokenizer_finetune", mesh=one_device())
