"""The experiment configuration every file under configs/ starts from (big_vision style: configs are code).

`base_config()` is the embedded tiny default: a synthetic cohort in the release layout, the `regions` dataset,
a tiny CT-ViT + projector + Mistral-tokenizer decoder, stand-ins for the pretrained encoder and VLM decoder a real
run loads, then the paper's two VLM stages (projector alignment, then LoRA + projector), on a laptop CPU. Experiment files copy it and change what differs;
`launch.py --config.a.b=value` overrides any leaf from the command line.
"""
from __future__ import annotations

import ml_collections

# The paper's LoRA targets: every linear layer of the decoder.
ALL_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


def stage(steps: int = 0, *, epochs: float = 0.0, peak_lr: float, **kw) -> ml_collections.ConfigDict:
    """One training stage. Give `steps`, or `epochs` over the training mixture (steps = ceil(epochs * N / B))."""
    c = ml_collections.ConfigDict()
    c.steps = steps
    c.epochs = epochs
    c.peak_lr = peak_lr
    c.warmup_fraction = 0.03
    c.final_lr_fraction = 0.0
    c.weight_decay = 0.0
    c.clip_norm = 1.0
    c.grad_accum_steps = 1
    c.batch_size = 0  # per-host batch of this stage (0 = data.batch_size)
    c.log_every = 10
    c.eval_every = 0
    c.save_every = 100
    c.keep = 2
    c.best_metric = "val_loss"
    # VLM stages: > 0 also trains CT-ViT with the language loss at peak_lr x this (0 = frozen, as in the paper,
    # whose encoder comes pre-trained from encoder_pretrain / CT-CLIP).
    c.encoder_lr_scale = 0.0
    c.init_from = ""  # earlier stage whose final weights start this one ("" = the previous stage in `order`)
    c.kind = ""  # registered stage kind (jaxpetct/train/stages.py); "" = the stage's own name
    # ((group, path regex[, lr scale]), ...) overriding the kind's trainable groups; () = the kind's
    c.trainable = ()
    c.update(kw)
    return c


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "default"
    c.seed = 0
    # Salt of the pseudonymous study ids: this, else $JAXPETCT_SALT, else (synthetic cohorts only) the public demo
    # salt (studies.deid.resolve_salt). Real data needs a secret of your own: ids made with a public salt can be
    # linked back by anyone holding the original names.
    c.salt = ""

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # synthetic | release | dicom
    c.data.manual_dir = ""  # release root or DICOM folder; synthetic: <workdir>/cohort
    c.data.data_dir = ""  # built TFDS datasets; default <workdir>/tfds
    c.data.synthetic = ml_collections.ConfigDict(dict(n=600, seed=0, size="small"))
    c.data.record_shape = (32, 64, 64)  # grid the records store (D, H, W); the loader resizes to the encoder input
    c.data.lesion_table = ""  # lesion centres for encoder_pretrain's lesion_map objective ("" = synthetic truth)
    c.data.beam = False
    c.data.beam_options = ""  # e.g. "runner=DataflowRunner,project=...,region=..." (TFDS syntax)
    c.data.beam_workers = 0  # Beam DirectRunner processes (0 = CPU count); data.worker_count is the loader's
    # Training mixture: (TFDS config, task, weight). The paper's O = regions/report; C adds comparison/comparison.
    c.data.train_mix = (("regions", "report", 1.0),)
    c.data.paraphrase_prob = 0.0  # the paper's G: fact-preserving paraphrases of the target report
    c.data.tokenizer = "mistral-v1"  # or an HF tokenizer directory
    c.data.template = "mistral"
    c.data.max_length = 384
    c.data.buckets = (128, 256, 384)
    c.data.batch_size = 8  # per host
    c.data.val_batch_size = 8  # validation-loss batches (eval.batch_size: generation)
    c.data.worker_count = 0  # Grain worker processes
    # Loader batches decoded ahead in each process (threads, buffer). A paper-size loader batch of 32 volumes is
    # 8 GB of float32 on the host: keep the buffer small there.
    c.data.read_threads = 2
    c.data.read_buffer = 4
    c.data.image = ml_collections.ConfigDict(dict(channels=("pet", "ct"), pet_mode="linear", pet_max=10.0,
                                                  out_range="unit"))
    # The paper's image augmentations (off in its runs): edge-slice drop, rotation, noise. The reference drops 10-20
    # of ~140+ slices; the default's 32-slice records drop 2-4 (the same fraction).
    c.data.augment = ml_collections.ConfigDict(dict(enabled=False, edge_drop=(2, 4), edge_drop_prob=0.5,
                                                    rotate_deg=15.0, rotate_prob=0.5, noise_std=0.02,
                                                    noise_prob=0.5))

    c.model = ml_collections.ConfigDict()
    # No patch input LayerNorm: it erases focal PET uptake before a briefly trained encoder can see it; a lesion
    # channel: the per-token lesion logit that encoder_pretrain (lesion_map) trains, appended to the features.
    c.model.encoder = ml_collections.ConfigDict(dict(preset="tiny", channels=2, depth=32, height=64, width=64,
                                                     patch_size=8, temporal_patch_size=4, dim=32,
                                                     patch_input_norm=False, lesion_channel=True))
    # The visual token of a slab is its maximum lesion logit (projector.py says why); the paper's reads all.
    c.model.projector = ml_collections.ConfigDict(dict(kind="linear", pool=8, pool_op="max", features="lesion"))
    c.model.decoder = ml_collections.ConfigDict(dict(preset="tiny", hf_dir=""))
    c.model.lora = ml_collections.ConfigDict(dict(rank=16, alpha=32.0, dropout=0.05, targets=ALL_LINEARS))
    c.model.prefix_lm = False
    c.model.freeze_encoder = True
    c.model.loss_chunk = 4096  # vocabulary chunk of the training loss (0 = materialise the full logits)
    # encoder_pretrain only: the text tower (random tiny RoBERTa over the Mistral vocabulary here; a PhoBERT folder
    # in hf_dir brings its own weights and tokenizer).
    c.model.text_encoder = ml_collections.ConfigDict(dict(preset="tiny", vocab_size=32000, pad_token_id=0,
                                                          max_position_embeddings=514, hf_dir=""))
    c.model.clip = ml_collections.ConfigDict(dict(latent_dim=64, loss="clip"))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    # The paper's VLM stages (align: projector only, lr 2e-3; lora: LoRA + projector, lr 2e-5), at demo length,
    # after two stand-ins for the pretrained weights a real run loads (docs/results.md, "Does the model see lesions?"):
    # - encoder_pretrain with objective "lesion_map": CT-ViT learns where lesions are from the synthetic cohort's
    #   lesion centres (the paper's CT-ViT comes CLIP-pretrained; a CLIP or report-only tiny encoder sees nothing);
    # - full (projector + all decoder weights, from a random decoder): the stand-in for LLaVA-Med, a decoder that
    #   already reads visual tokens. LoRA on a decoder that never saw an image barely learns to read one (given a
    #   perfect lesion map, P(lesion sentence) after 300 LoRA steps: 0.415 on lesion regions vs 0.413 on normal
    #   ones; after `full`: 0.777 vs 0.355).
    # lm_pretrain (text only, images blanked) is the stand-in for a text-only LLM; not in the default order.
    c.order = ("encoder_pretrain", "full", "align", "lora")
    c.stages = ml_collections.ConfigDict()
    # objective "clip" (the paper: volume vs report text) or "lesion_map" (per-token lesion centres from
    # data.lesion_table, or a synthetic cohort's truth: jaxpetct/data/lesion_targets.py); pos_weight weighs a
    # lesion token against a background one in the lesion_map loss.
    c.stages.encoder_pretrain = stage(1200, peak_lr=1e-3, weight_decay=1e-4, log_every=20, save_every=400,
                                      best_metric="", objective="lesion_map", pos_weight=21.0)
    c.stages.lm_pretrain = stage(200, peak_lr=3e-3, log_every=10, save_every=100)
    c.stages.full = stage(500, peak_lr=3e-3, log_every=10, save_every=250)
    c.stages.align = stage(150, peak_lr=2e-3, log_every=10, save_every=50)
    c.stages.lora = stage(300, peak_lr=2e-3, log_every=10, save_every=100, eval_every=100)

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"
    c.eval.val_split = "validation"
    c.eval.tasks = ("report",)
    c.eval.max_examples = 0  # 0 = the whole split
    c.eval.max_new_tokens = 160
    c.eval.temperature = 0.0
    c.eval.top_k = 0
    c.eval.top_p = 1.0
    c.eval.batch_size = 8
    c.eval.blank_baseline = True  # also score the same model on blank volumes: does it use the image?
    c.eval.viewer = True
    # Lesion linear probe (jaxpetct.eval.probe): lesion presence per region from the input PET and from the
    # encoder's features, fitted on train, scored on eval.split; at most this many records per split.
    c.eval.lesion_probe = True
    c.eval.probe_max_examples = 2000
    c.eval.bertscore_model = ""  # local RoBERTa/PhoBERT directory; empty = BERTScore skipped

    c.export = ml_collections.ConfigDict(dict(dtype="float32"))

    # `launch.py --mode plan` (jaxpetct/jobs/plan.py): compile every stage's train step and the generation program
    # for a virtual mesh of `devices` CPU devices and check them against one `target` device (perf's table:
    # h100, h200, tpu_v5p). devices 0 = the product of the mesh sizes (all fixed); processes = hosts of the run
    # (global batch = per-host batch x processes); fits = per-device bytes <= memory x (1 - margin);
    # target_memory_gb > 0 replaces the target's memory (GB = 1e9 bytes) for what-if questions.
    c.plan = ml_collections.ConfigDict(dict(target="h100", devices=0, processes=1, margin=0.1, target_memory_gb=0.0,
                                            generate=True))
    return c


# ---- the paper's table rows --------------------------------------------------------------------------------------
_LLMS = {
    # decoder preset, chat template, tokenizer spec. Real runs point model.decoder.hf_dir at the pretrained
    # weights (and data.tokenizer at their tokenizer directory when it is not Mistral's).
    "mistral_7b": ("mistral_7b", "mistral", "mistral-v1"),  # LLaVA-Med v1.5 (Mistral-7B-Instruct-v0.2 base)
    "llama2_7b": ("llama2_7b", "llama2", ""),
    "qwen2_0_5b": ("qwen2_0_5b", "chatml", ""),
}
# The paper's data ablations: O = original reports; +G = fact-preserving paraphrases; +C = study comparisons.
_MIXES = {
    "O": ((("regions", "report", 1.0),), 0.0),
    "OG": ((("regions", "report", 1.0),), 0.5),
    "OGC": ((("regions", "report", 1.0), ("comparison", "comparison", 0.5)), 0.5),
}


def paper_config(llm: str = "mistral_7b", mix: str = "OG") -> ml_collections.ConfigDict:
    """CT-ViT (140x480x480, 14 tokens of 24x24x512) + linear projector + a 7B LLM: align then LoRA r64/a16.

    Recipe from the paper: align = projector only, lr 2e-3, 20 epochs, global batch 256, cosine, 3 % warm-up,
    bf16, max length 2048; lora = LoRA r 64, alpha 16, dropout 0.05 on every linear of the LLM plus the
    projector, lr 2e-5, 20 epochs. A stage's batch_size is per host and is the whole optimizer step: global batch
    = batch_size x hosts (256 and 128 here, on one host); grad_accum_steps loader batches of batch_size /
    grad_accum_steps rows make one step, one at a time in memory: it sets the memory, not the batch. Sized for the paper's 4 GPUs, planned as 4 x H100 (mesh fsdp 4;
    align 256 and lora 128 in loader batches of 32, 8 rows a GPU): `launch.py --mode plan` shows whether a change
    fits (align 36.4 GiB, lora 46.7 GiB a GPU).
    """
    if llm not in _LLMS or mix not in _MIXES:
        raise ValueError(f"llm in {sorted(_LLMS)}, mix in {sorted(_MIXES)}")
    preset, template, tokenizer = _LLMS[llm]
    c = base_config()
    c.name = f"paper_ctvit_{llm}_{mix}"
    c.salt = ""  # real data: set $JAXPETCT_SALT (refused when empty)
    c.data.source = "release"
    c.data.manual_dir = ""  # --config.data.manual_dir=/path/to/ViMed-PET
    c.data.record_shape = (140, 480, 480)
    c.data.augment.edge_drop = (10, 20)  # the reference code's range, for 140-slice volumes
    c.data.train_mix, c.data.paraphrase_prob = _MIXES[mix]
    c.data.tokenizer = tokenizer
    c.data.template = template
    c.data.max_length = 2048
    c.data.buckets = (512, 1024, 2048)
    c.data.batch_size = 16
    c.data.val_batch_size = 8  # validation-loss batches (eval.batch_size: generation)
    c.data.worker_count = 8
    c.data.read_buffer = 1  # per process: 8 workers x (1 + their own buffers) loader batches of 140x480x480 volumes
    c.model.encoder = ml_collections.ConfigDict(dict(preset="paper", channels=2, dtype="bfloat16"))
    c.model.projector = ml_collections.ConfigDict(dict(kind="linear", pool=1, dtype="bfloat16"))
    c.model.decoder = ml_collections.ConfigDict(dict(preset=preset, hf_dir="", dtype="bfloat16",
                                                      param_dtype="float32", scan_layers=True, remat=True))
    c.model.lora = ml_collections.ConfigDict(dict(rank=64, alpha=16.0, dropout=0.05, targets=ALL_LINEARS))
    c.order = ("align", "lora")
    # stage 1 of the paper, when a run adds it to `order`: CLIP against the reports (configs/paper/encoder_pretrain_*)
    c.stages.encoder_pretrain = stage(epochs=20, peak_lr=1e-4, save_every=500, log_every=10, best_metric="",
                                      objective="clip")
    c.stages.align = stage(epochs=20, peak_lr=2e-3, batch_size=256, grad_accum_steps=8, save_every=500,
                           log_every=10, eval_every=1000)
    c.stages.lora = stage(epochs=20, peak_lr=2e-5, batch_size=128, grad_accum_steps=4, save_every=500, log_every=10,
                          eval_every=1000)
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.eval.max_new_tokens = 512
    c.eval.tasks = ("report", "vqa") if mix == "OGC" else ("report",)
    c.eval.batch_size = 16
    c.plan.target, c.plan.devices = "h100", 4  # the paper's 4 GPUs (fsdp -1 takes all 4)
    return c
