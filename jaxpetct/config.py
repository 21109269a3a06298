"""Every setting of an experiment, typed, with its one default: the embedded tiny default is these dataclasses' values.

Configs are code (big_vision style): `base_config()` turns the dataclasses into an ml_collections ConfigDict, the
files under configs/ change what differs, `launch.py --config.a.b=value` overrides any leaf. `typed(cfg)` reads a
ConfigDict back into the dataclasses: a key no dataclass declares, or a value of the wrong type, is a one-line
ConfigError naming the key. A setting's default lives here and nowhere else; code that consumes a section reads
its typed value, never `.get(key, default)`.

Three model sections are open: `model.encoder`, `model.decoder` and `model.text_encoder` name a preset plus
overrides of the model's own config dataclass (models/ctvit.CTViTConfig, models/decoder_config.DecoderConfig,
models/text_encoder.RobertaConfig), whose presets are the home of those defaults; models/factory checks the keys.
The default is a synthetic cohort in the release layout, the `regions` dataset, a tiny CT-ViT + projector +
Mistral-tokenizer decoder, stand-ins for the pretrained encoder and decoder a real run loads, then the paper's two
VLM stages (projector alignment, then LoRA + projector), on a laptop CPU. The paper's rows: jaxpetct/paper.py.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

import ml_collections

from jaxpetct.errors import ConfigError

# The paper's LoRA targets: every linear layer of the decoder.
ALL_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")
_section = dataclasses.dataclass(frozen=True, kw_only=True)
_dict = lambda **kw: dataclasses.field(default_factory=lambda: dict(kw))  # noqa: E731


@_section
class Stage:
    """One training stage. Give `steps`, or `epochs` over the training mixture (steps = ceil(epochs * N / B))."""
    steps: int = 0
    epochs: float = 0.0
    peak_lr: float
    warmup_fraction: float = 0.03
    final_lr_fraction: float = 0.0
    weight_decay: float = 0.0
    # "adamw": decay decoupled from the gradient (LLaVA's AdamW); "adam": torch.optim.Adam's weight_decay, an L2
    # term added to the gradient before the moments (the paper's Cosmos fine-tuning)
    optimizer: str = "adamw"
    clip_norm: float = 1.0  # 0 = no clipping
    grad_accum_steps: int = 1  # loader batches per optimizer step (one k-times-larger batch, token-weighted)
    batch_size: int = 0  # per-host batch of this stage's optimizer step (0 = data.batch_size)
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    save_every: int = 100
    keep: int = 2
    best_metric: str = "val_loss"  # "" = keep the last checkpoints only
    # VLM stages: > 0 also trains CT-ViT with the language loss at peak_lr x this (0 = frozen, as in the paper,
    # whose encoder comes pre-trained from encoder_pretrain / CT-CLIP).
    encoder_lr_scale: float = 0.0
    init_from: str = ""  # earlier stage whose final weights start this one ("" = the previous stage in `order`)
    kind: str = ""  # registered stage kind (jaxpetct/train/stages.py); "" = the stage's own name
    # ((group, path regex[, lr scale]), ...) overriding the kind's trainable groups; () = the kind's
    trainable: tuple = ()
    # encoder_pretrain only: "clip" (the paper: volume vs report text) or "lesion_map" (per-token lesion centres
    # from data.lesion_table, or a synthetic cohort's truth: jaxpetct/data/lesion_targets.py); pos_weight weighs a
    # lesion token against a background one in the lesion_map loss.
    objective: str = "clip"
    pos_weight: float = 21.0


def stage(steps: int = 0, **kw) -> ml_collections.ConfigDict:
    """A config entry `stages.<name>`: `stage(300, peak_lr=2e-3, log_every=10)`."""
    return to_configdict(Stage(steps=steps, **kw))


@_section
class Synthetic:
    n: int = 600
    seed: int = 0
    size: str = "small"


@_section
class Image:
    channels: tuple[str, ...] = ("pet", "ct")
    pet_mode: str = "linear"
    pet_max: float = 10.0
    out_range: str = "unit"


@_section
class Augment:
    """The paper's image augmentations (off in its runs): edge-slice drop, rotation, noise. The reference drops
    10-20 of ~140+ slices; the default's 32-slice records drop 2-4 (the same fraction)."""
    enabled: bool = False
    edge_drop: tuple[int, ...] = (2, 4)
    edge_drop_prob: float = 0.5
    rotate_deg: float = 15.0
    rotate_prob: float = 0.5
    noise_std: float = 0.02
    noise_prob: float = 0.5


@_section
class Data:
    source: str = "synthetic"  # synthetic | release | dicom
    manual_dir: str = ""  # release root or DICOM folder; synthetic: <workdir>/cohort
    data_dir: str = ""  # built TFDS datasets; default <workdir>/tfds
    synthetic: Synthetic = dataclasses.field(default_factory=Synthetic)
    record_shape: tuple[int, ...] = (32, 64, 64)  # grid the records store (D, H, W); the loader resizes
    lesion_table: str = ""  # lesion centres for encoder_pretrain's lesion_map objective ("" = synthetic truth)
    beam: bool = False
    beam_options: str = ""  # e.g. "runner=DataflowRunner,project=...,region=..." (TFDS syntax)
    beam_workers: int = 0  # Beam DirectRunner processes (0 = CPU count); data.worker_count is the loader's
    # Training mixture: (TFDS config, task, weight). The paper's O = regions/report; C adds comparison/comparison.
    train_mix: tuple = (("regions", "report", 1.0),)
    paraphrase_prob: float = 0.0  # the paper's G: fact-preserving paraphrases of the target report
    # Report language: "vi", or "en" to train and evaluate on the release's English reports (reports_en; English
    # instructions, the English lesion vocabulary for clinical F1). English has report pairs only: no G, C or VQA.
    report_language: str = "vi"
    # "mistral-v1" (the paper's LLM), an HF tokenizer directory, or "corpus": a SentencePiece model of
    # model.decoder.vocab_size pieces trained at build time on the training texts (text/corpus_tokenizer.py says why
    # the tiny default, whose decoder is random, uses it)
    tokenizer: str = "corpus"
    template: str = "mistral"
    max_length: int = 384
    buckets: tuple[int, ...] = (128, 192, 384)
    batch_size: int = 8  # per host
    val_batch_size: int = 8  # validation-loss batches (eval.batch_size: generation)
    worker_count: int = 0  # Grain worker processes
    # Loader batches decoded ahead in each process (threads, buffer). A paper-size loader batch of 32 volumes is
    # 8 GB of float32 on the host: keep the buffer small there.
    read_threads: int = 2
    read_buffer: int = 4
    # Parsed records kept in memory per process while they fit (data/record_cache.py says why); 0 = off. The tiny
    # default's splits take ~470 MB; paper-size records (~130 MB each) mostly miss it.
    cache_mb: int = 512
    image: Image = dataclasses.field(default_factory=Image)
    augment: Augment = dataclasses.field(default_factory=Augment)


@_section
class Projector:
    kind: str = "linear"
    pool: int = 8
    # The visual token of a slab is its maximum lesion logit (projector.py says why); the paper's reads all.
    pool_op: str = "max"
    features: str = "lesion"
    dtype: str = "float32"
    param_dtype: str = "float32"


@_section
class Lora:
    rank: int = 16  # 0 = no adapters
    alpha: float = 32.0
    # PEFT's default. The paper's rows set their 0.05 (jaxpetct.paper); on the demo's CPU a dropout mask per
    # adapted input doubled the LoRA step's compile time and cost a fifth of its step time.
    dropout: float = 0.0
    targets: tuple[str, ...] = ALL_LINEARS


@_section
class Clip:
    latent_dim: int = 64
    loss: str = "clip"  # or "siglip"
    vision_pool: str = "ctclip"
    text_pool: str = "cls"


@_section
class Model:
    # Open: preset + CTViTConfig fields. No patch input LayerNorm: it erases focal PET uptake before a briefly
    # trained encoder can see it; a lesion channel: the per-token lesion logit that encoder_pretrain (lesion_map)
    # trains, appended to the features.
    encoder: dict = _dict(preset="tiny", channels=2, depth=32, height=64, width=64, patch_size=8,
                          temporal_patch_size=4, dim=32, patch_input_norm=False, lesion_channel=True)
    projector: Projector = dataclasses.field(default_factory=Projector)
    decoder: dict = _dict(preset="tiny", hf_dir="", vocab_size=1024)  # open: preset + DecoderConfig fields; hf_dir = weights
    lora: Lora = dataclasses.field(default_factory=Lora)
    prefix_lm: bool = False
    freeze_encoder: bool = True
    # tokens per block of the training loss (0 = materialise the full logits). Tokens with loss are packed first and
    # paid for in whole blocks: 256 wastes < 256 rows of head matmul per step (1024 wasted 28 % of an 8 x 256 SFT
    # batch's head work), and one block's logits are 256 x V float32 (32 MB at 32k).
    loss_chunk: int = 256
    # encoder_pretrain only: the text tower (open: preset + RobertaConfig fields; random tiny RoBERTa over the
    # Mistral vocabulary here; a PhoBERT folder in hf_dir brings its own weights and tokenizer).
    text_encoder: dict = _dict(preset="tiny", vocab_size=32000, pad_token_id=0, max_position_embeddings=514,
                               hf_dir="")
    clip: Clip = dataclasses.field(default_factory=Clip)


@_section
class Mesh:
    data: int = -1  # -1 = the devices the other axes leave
    fsdp: int = 1
    tensor: int = 1


@_section
class Eval:
    split: str = "test"
    val_split: str = "validation"
    tasks: tuple[str, ...] = ("report",)
    max_examples: int = 0  # 0 = the whole split
    max_new_tokens: int = 160
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 8
    blank_baseline: bool = True  # also score the same model on blank volumes: does it use the image?
    viewer: bool = True
    # Lesion linear probe (jaxpetct.eval.probe): lesion presence per region from the input PET and from the
    # encoder's features, fitted on train, scored on eval.split; at most this many records per split.
    lesion_probe: bool = True
    probe_max_examples: int = 500
    bertscore_model: str = ""  # local RoBERTa/PhoBERT directory; empty = BERTScore skipped


@_section
class Export:
    dtype: str = "float32"


@_section
class Predict:
    """`--mode predict`: reports for new studies with the run's final weights (jaxpetct.predict)."""

    input: str = ""  # a DICOM folder, release root, file or .zip
    out: str = ""  # default: <workdir>/predict


@_section
class Plan:
    """`launch.py --mode plan` (jaxpetct/jobs/plan.py): compile every stage's train step and the generation program
    for a virtual mesh of `devices` CPU devices and check them against one `target` device (perf's table: h100,
    h200, tpu_v5p). devices 0 = the product of the mesh sizes (all fixed); processes = hosts of the run (global
    batch = per-host batch x processes); fits = per-device bytes <= memory x (1 - margin); target_memory_gb > 0
    replaces the target's memory (GB = 1e9 bytes) for what-if questions."""
    target: str = "h100"
    devices: int = 0
    processes: int = 1
    margin: float = 0.1
    target_memory_gb: float = 0.0
    generate: bool = True


# The paper's VLM stages (align: projector only, lr 2e-3; lora: LoRA + projector, lr 2e-5), at demo length, after
# two stand-ins for the pretrained weights a real run loads (docs/results.md, "Does the model see lesions?"):
# - encoder_pretrain with objective "lesion_map": CT-ViT learns where lesions are from the synthetic cohort's lesion
#   centres (the paper's CT-ViT comes CLIP-pretrained; a CLIP or report-only tiny encoder sees nothing);
# - full (projector + all decoder weights, from a random decoder): the stand-in for LLaVA-Med, a decoder that
#   already reads visual tokens. LoRA on a decoder that never saw an image barely learns to read one
#   (docs/results.md).
# lm_pretrain (text only, images blanked) is the stand-in for a text-only LLM; not in the default order.
def _demo_stages() -> dict:
    return dict(
        encoder_pretrain=Stage(steps=1200, peak_lr=1e-3, weight_decay=1e-4, log_every=20, save_every=400,
                               best_metric="", objective="lesion_map"),
        lm_pretrain=Stage(steps=200, peak_lr=3e-3),
        full=Stage(steps=600, peak_lr=3e-3, save_every=300),
        align=Stage(steps=150, peak_lr=2e-3, save_every=50),
        lora=Stage(steps=300, peak_lr=2e-3, eval_every=100))


@_section
class Config:
    name: str = "default"
    seed: int = 0
    # Salt of the pseudonymous study ids: this, else $JAXPETCT_SALT, else (synthetic cohorts only) the public demo
    # salt (studies.deid.resolve_salt). Real data needs a secret of your own: ids made with a public salt can be
    # linked back by anyone holding the original names.
    salt: str = ""
    data: Data = dataclasses.field(default_factory=Data)
    model: Model = dataclasses.field(default_factory=Model)
    mesh: Mesh = dataclasses.field(default_factory=Mesh)
    order: tuple[str, ...] = ("encoder_pretrain", "full", "align", "lora")
    stages: dict[str, Stage] = dataclasses.field(default_factory=_demo_stages)
    eval: Eval = dataclasses.field(default_factory=Eval)
    export: Export = dataclasses.field(default_factory=Export)
    predict: Predict = dataclasses.field(default_factory=Predict)
    plan: Plan = dataclasses.field(default_factory=Plan)


OPEN = {"model.encoder", "model.decoder", "model.text_encoder"}  # preset + a model config's fields (factory checks)


def base_config() -> ml_collections.ConfigDict:
    """The embedded tiny default as a ConfigDict (what configs/default.py returns)."""
    return to_configdict(Config())


def stage_settings(cfg: Mapping, name: str) -> Stage:
    """The typed `stages.<name>` of a config (ConfigError if the order names a stage the config lacks)."""
    if name not in cfg["stages"]:
        raise ConfigError(f"stage {name!r} is in order but has no config entry stages.{name}")
    return typed(cfg["stages"][name], Stage, f"stages.{name}")


def to_configdict(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return ml_collections.ConfigDict({k: to_configdict(v) for k, v in value.items()})
    return value


def typed(cfg: Mapping, cls: type = Config, where: str = "") -> Any:
    """The dataclass `cls` read from a (Config)Dict: unknown keys and wrongly typed values are ConfigErrors."""
    values = dict(cfg.items()) if hasattr(cfg, "items") else {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where + '.' if where else ''}{unknown[0]}: no such setting in {where or 'the config'} "
                          f"(settings: {', '.join(sorted(names))})")
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in values.items():
        key = f"{where}.{k}" if where else k
        out[k] = _read(v, hints[k], key)
    try:
        return cls(**out)
    except TypeError as e:  # a required setting (a stage's peak_lr) left out
        raise ConfigError(f"{where or 'config'}: {e}") from None


def _read(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint) or hint
    if dataclasses.is_dataclass(hint):
        return typed(_mapping(value, key), hint, key)
    if origin is dict:
        mapping = _plain(_mapping(value, key))
        args = typing.get_args(hint)
        if args and dataclasses.is_dataclass(args[1]):
            return {name: typed(_mapping(v, f"{key}.{name}"), args[1], f"{key}.{name}") for name, v in mapping.items()}
        return mapping
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{key}: want a tuple, got {value!r}")
        return tuple(_plain(v) for v in value)
    if origin is bool:
        ok = isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, origin)
    if not ok:
        raise ConfigError(f"{key}: want {getattr(origin, '__name__', origin)}, got {value!r}")
    return value


def _mapping(value: Any, key: str) -> Mapping:
    if not hasattr(value, "items"):
        raise ConfigError(f"{key}: want a section (a ConfigDict of settings), got {value!r}")
    return value


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value
