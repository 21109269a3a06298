"""Export a trained VLM: the LLM as a transformers directory (LoRA merged), the vision parts as safetensors + JSON.

Layout of an export directory (written atomically: a crash leaves the previous export or nothing)::

    llm/       config.json, generation_config.json, model*.safetensors (LoRA folded into the kernels),
               tokenizer files: copied from an HF tokenizer folder, or for the embedded Mistral v1 tokenizer
               its tokenizer.model + tokenizer.json (`spm_json`) + tokenizer_config.json
    vision/    ctvit.safetensors, projector.safetensors (our NNX parameter names and layouts: Linear kernels are
               (in, out)), vision_config.json (encoder and projector configs, VLM flags, the chat template);
               with a Cosmos encoder, cosmos/ (a diffusers AutoencoderKLCosmos folder, the whole tokenizer:
               `AutoencoderKLCosmos.from_pretrained` reads it) instead of ctvit.safetensors, and its lesion head
               (lesion_channel) in cosmos_lesion_head.safetensors
    README.md  how to load each part

`load_vision(dir)` and `load_vlm(dir)` read it back; tensors come back bit-identical. Only process 0 writes; all
processes take part in gathering sharded weights.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxpetct.eval.spm_json import write_tokenizer_json
from jaxpetct.models.cosmos.io import load_diffusers, save_diffusers
from jaxpetct.models.cosmos.vision import CosmosVisionConfig, CosmosVisionEncoder
from jaxpetct.models.ctvit import CTViT, CTViTConfig
from jaxpetct.models.hf_io import export_decoder, load_decoder
from jaxpetct.models.projector import Projector, ProjectorConfig
from jaxpetct.models.safetensors_io import CheckpointError, atomic_directory, host_array
from jaxpetct.models.vlm import VLM
from jaxpetct.text.tokenizer import MISTRAL_V1, mistral_v1_model_file
from jaxpetct.errors import UserError

FORMAT = "jaxpetct-vlm-vision"
VERSION = 1
VISION_CONFIG, ENCODER_FILE, PROJECTOR_FILE = "vision_config.json", "ctvit.safetensors", "projector.safetensors"
COSMOS_DIR = "cosmos"  # vision/cosmos: the Cosmos encoder's tokenizer as a diffusers folder
LESION_HEAD_FILE = "cosmos_lesion_head.safetensors"  # a Cosmos encoder's lesion head (lesion_channel), if any


class ExportError(UserError, ValueError):
    """An export directory that cannot be written or read back; names the file and the reason."""


def _config_json(cfg) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ("dtype", "param_dtype"):
            v = jnp.dtype(v).name
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _config_from_json(cls, obj: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - names)
    if unknown:
        raise ExportError(f"{where}: unknown {cls.__name__} fields {unknown}")
    fields = {k: (tuple(v) if isinstance(v, list) else jnp.dtype(v) if k in ("dtype", "param_dtype") else v)
              for k, v in obj.items()}
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{where}: invalid {cls.__name__} ({e})") from e


def _param_tensors(module: nnx.Module) -> dict[str, np.ndarray]:
    state = nnx.state(module, nnx.Param)
    return {".".join(map(str, path)): host_array(var.get_value()) for path, var in nnx.to_flat_state(state)}


def _fill(abstract: nnx.Module, path: pathlib.Path) -> nnx.Module:
    """Fill an `nnx.eval_shape` module from a safetensors file holding exactly its parameters."""
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    try:
        with safe_open(str(path), framework="numpy") as f:
            stored = set(f.keys())
            wanted = {".".join(map(str, p)) for p, v in flat if isinstance(v, nnx.Param)}
            if stored != wanted:
                raise ExportError(f"{path.name}: tensors do not match the config (missing {sorted(wanted - stored)[:3]}, "
                                  f"unexpected {sorted(stored - wanted)[:3]})")
            values = []
            for p, var in flat:
                name = ".".join(map(str, p))
                if name not in wanted:
                    values.append((p, var))
                    continue
                array = f.get_tensor(name)
                if tuple(array.shape) != tuple(var.get_value().shape):
                    raise ExportError(f"{path.name}: {name} has shape {array.shape}, expected {var.get_value().shape}")
                values.append((p, var.replace(jnp.asarray(array, dtype=var.get_value().dtype))))
    except (OSError, FileNotFoundError) as e:
        raise ExportError(f"{path.name}: cannot read ({e})") from e
    return nnx.merge(graphdef, nnx.from_flat_state(values))


def _write_mistral_tokenizer(llm: pathlib.Path) -> list[str]:
    model_file = mistral_v1_model_file()
    shutil.copyfile(model_file, llm / "tokenizer.model")
    write_tokenizer_json(model_file, llm / "tokenizer.json")
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": None, "add_bos_token": True, "add_eos_token": False, "legacy": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 32768}
    (llm / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (llm / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                              "unk_token": "<unk>"}, indent=2))
    return ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


README = """# {name}: a jaxpetct PET/CT vision-language model

Exported from jaxpetct (JAX/Flax NNX). LoRA adapters are merged into the LLM weights.

## The LLM (transformers)

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
llm = AutoModelForCausalLM.from_pretrained("{name}/llm")        # {family}, {layers} layers, hidden {hidden}
tokenizer = AutoTokenizer.from_pretrained("{name}/llm")
```

The LLM expects the visual tokens spliced into its input embeddings (`inputs_embeds`) at the positions of the
`<image>` placeholder: {tokens} tokens per volume, produced by the vision parts below. Chat template: `{template}`.

## The vision parts (jaxpetct)

```python
from jaxpetct.eval.export import load_vision, load_vlm
encoder, projector, meta = load_vision("{name}")  # {encoder} {input} -> {tokens} visual tokens of width {hidden}
vlm = load_vlm("{name}")                          # the whole VLM: encoder + projector + the LLM above
```

Without jaxpetct the tensors are plain safetensors (`safetensors.numpy.load_file("{name}/vision/{proj}")`);
names are our module paths and Linear kernels are stored (in, out). `vision/{cfg}` holds both configs.
"""


def export_vlm(model: VLM, out_dir: Union[str, pathlib.Path], *, tokenizer: Union[str, pathlib.Path, None] = MISTRAL_V1,
               template: str = "mistral", dtype: Optional[str] = None,
               preprocess: Optional[dict] = None) -> pathlib.Path:
    """Write the export directory (see the module docstring); `tokenizer` is "mistral-v1", an HF folder or None;
    `preprocess` (predict.Preprocess.to_json) records how the model's inputs were made, for prediction."""
    out = pathlib.Path(out_dir)
    tok_dir = None if tokenizer in (None, MISTRAL_V1) else pathlib.Path(tokenizer)
    if tok_dir is not None and not tok_dir.is_dir():
        raise ExportError(f"tokenizer folder {tok_dir.name!r} does not exist")
    cosmos = isinstance(model.encoder, CosmosVisionEncoder)
    encoder_t = None if cosmos else _param_tensors(model.encoder)  # gathers: all processes
    head = getattr(model.encoder, "lesion_head", None) if cosmos else None
    head_t = None if head is None else _param_tensors(head)
    projector_t = _param_tensors(model.projector)
    if jax.process_index() != 0:
        if cosmos:
            save_diffusers(model.encoder.tokenizer, out / "vision" / COSMOS_DIR)  # its gathers only
        export_decoder(model.decoder, out / "llm", dtype=dtype)
        return out
    with atomic_directory(out) as tmp:
        vision = tmp / "vision"
        vision.mkdir()
        if cosmos:
            save_diffusers(model.encoder.tokenizer, vision / COSMOS_DIR)
        export_decoder(model.decoder, tmp / "llm", tokenizer_dir=tok_dir, dtype=dtype)
        if tokenizer == MISTRAL_V1:
            _write_mistral_tokenizer(tmp / "llm")
        if encoder_t is not None:
            save_file(encoder_t, str(vision / ENCODER_FILE), metadata={"format": FORMAT})
        if head_t is not None:
            save_file(head_t, str(vision / LESION_HEAD_FILE), metadata={"format": FORMAT})
        save_file(projector_t, str(vision / PROJECTOR_FILE), metadata={"format": FORMAT})
        meta = {"format": FORMAT, "version": VERSION, "encoder_kind": "cosmos" if cosmos else "ctvit",
                "encoder": _cosmos_json(model.encoder.cfg) if cosmos else _config_json(model.encoder.cfg),
                "projector": _config_json(model.projector.cfg),
                "vlm": {"prefix_lm": bool(model.prefix_lm), "freeze_encoder": bool(model.freeze_encoder),
                        "num_visual_tokens": int(model.num_visual_tokens)},
                "chat_template": template, "image_placeholder": "<image>",
                "input_shape": list(model.encoder.cfg.input_shape)}
        if preprocess is not None:
            meta["preprocess"] = preprocess
        (vision / VISION_CONFIG).write_text(json.dumps(meta, indent=2))
        dcfg = model.decoder.cfg
        (tmp / "README.md").write_text(README.format(
            name=out.name, family=dcfg.family, layers=dcfg.num_layers, hidden=dcfg.hidden_size,
            encoder="Cosmos (vision/cosmos: a diffusers folder)" if cosmos else "CT-ViT",
            tokens=model.num_visual_tokens, template=template, input="x".join(map(str, model.encoder.cfg.input_shape)),
            proj=PROJECTOR_FILE, cfg=VISION_CONFIG))
    return out


def _cosmos_json(cfg: CosmosVisionConfig) -> dict:
    """The Cosmos encoder's volume and runtime settings (its architecture is vision/cosmos/config.json)."""
    t = cfg.tokenizer
    return {"channels": cfg.channels, "depth": cfg.depth, "height": cfg.height, "width": cfg.width,
            "lesion_channel": bool(cfg.lesion_channel),
            "dtype": jnp.dtype(t.dtype).name, "param_dtype": jnp.dtype(t.param_dtype).name, "remat": bool(t.remat)}


def _load_cosmos(vision: pathlib.Path, settings: dict) -> CosmosVisionEncoder:
    try:
        runtime = {k: settings[k] for k in ("dtype", "param_dtype", "remat")}
        tokenizer = load_diffusers(vision / COSMOS_DIR, **runtime)
        volume = {k: settings[k] for k in ("channels", "depth", "height", "width")}
        cfg = CosmosVisionConfig(tokenizer=tokenizer.cfg, lesion_channel=bool(settings.get("lesion_channel")), **volume)
    except (UserError, KeyError, ValueError) as e:
        raise ExportError(f"vision/{COSMOS_DIR}: cannot load the Cosmos encoder ({e})") from e
    encoder = CosmosVisionEncoder(cfg, tokenizer=tokenizer)
    if encoder.lesion_head is not None:
        c, dtype = cfg.tokenizer.latent_channels, cfg.tokenizer.param_dtype
        encoder.lesion_head = _fill(nnx.eval_shape(lambda: nnx.Linear(c, 1, param_dtype=dtype, rngs=nnx.Rngs(0))),
                                    vision / LESION_HEAD_FILE)
    return encoder


def load_vision(export_dir: Union[str, pathlib.Path]) -> tuple[nnx.Module, Projector, dict[str, Any]]:
    """(encoder, projector, vision_config.json contents) of an export directory."""
    vision = pathlib.Path(export_dir) / "vision"
    path = vision / VISION_CONFIG
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path.parent.name}/{path.name}: missing (not a jaxpetct export?)") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{path.name}: invalid JSON ({e})") from e
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ExportError(f"{path.name}: format {meta.get('format')!r} v{meta.get('version')}, expected {FORMAT} "
                          f"v{VERSION}")
    proj_cfg = _config_from_json(ProjectorConfig, meta["projector"], path.name)
    if meta.get("encoder_kind", "ctvit") == "cosmos":
        encoder = _load_cosmos(vision, meta["encoder"])
    else:
        enc_cfg = _config_from_json(CTViTConfig, meta["encoder"], path.name)
        encoder = _fill(nnx.eval_shape(lambda: CTViT(enc_cfg, rngs=nnx.Rngs(0))), vision / ENCODER_FILE)
    projector = _fill(nnx.eval_shape(lambda: Projector(proj_cfg, rngs=nnx.Rngs(0))), vision / PROJECTOR_FILE)
    return encoder, projector, meta


def load_vlm(export_dir: Union[str, pathlib.Path], **decoder_overrides) -> VLM:
    """The whole VLM from an export directory (the LLM through `hf_io.load_decoder`, LoRA already merged)."""
    encoder, projector, meta = load_vision(export_dir)
    try:
        decoder = load_decoder(pathlib.Path(export_dir) / "llm", **decoder_overrides)
    except CheckpointError as e:
        raise ExportError(str(e)) from e
    flags = meta.get("vlm", {})
    return VLM(encoder, projector, decoder, prefix_lm=bool(flags.get("prefix_lm", False)),
               freeze_encoder=bool(flags.get("freeze_encoder", True)))
