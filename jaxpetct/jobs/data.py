"""The data side of a run: the cohort on disk, the built TFDS datasets, and the loaders over them.

Everything here is I/O at the edge of the library: it turns a config and a work directory into Grain iterators
(training), lists of batches (validation loss) and evaluation examples (generation), using only the public
functions of jaxpetct.studies, jaxpetct.data and jaxpetct.eval.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Iterator, Optional

import jax
import numpy as np

from jaxpetct.data import pipeline
from jaxpetct.data.build import BuildSummary, build_dataset
from jaxpetct.data.inputs import AugmentConfig, ImageConfig, TextConfig, model_images
from jaxpetct.atomic import write_text
from jaxpetct.errors import ConfigError  # noqa: F401 (public here: jobs raise it)
from jaxpetct.studies.deid import DEMO_SALT, resolve_salt  # noqa: F401 (DEMO_SALT: public here too)
from jaxpetct.data.records import as_text
from jaxpetct.text import corpus_tokenizer
from jaxpetct.text.corpus_tokenizer import CORPUS

log = logging.getLogger(__name__)

COHORT_SETTINGS = "synthetic_settings.json"  # written by `synth`; a built dataset keeps a copy (see `build`)


def salt_of(cfg) -> str:
    """The run's pseudonym salt (studies.deid.resolve_salt: --config.salt, else $JAXPETCT_SALT, else for the
    synthetic cohort the public demo salt; refused for real data)."""
    return resolve_salt(cfg.salt, synthetic=cfg.data.source == "synthetic", where="--config.salt")


def manual_dir(cfg, workdir: str) -> str:
    if cfg.data.manual_dir:
        return os.path.abspath(cfg.data.manual_dir)
    if cfg.data.source != "synthetic":
        raise ConfigError(f"data.source={cfg.data.source!r} needs data.manual_dir (the release root or DICOM folder)")
    return os.path.join(os.path.abspath(workdir), "cohort")


def data_dir(cfg, workdir: str) -> str:
    return os.path.abspath(cfg.data.data_dir) if cfg.data.data_dir else os.path.join(os.path.abspath(workdir), "tfds")


def synth(cfg, workdir: str) -> Optional[dict]:
    """Write the synthetic cohort (release layout) once; a finished cohort with the same settings is reused."""
    if cfg.data.source != "synthetic":
        log.info("data.source=%s: nothing to synthesise", cfg.data.source)
        return None
    from jaxpetct.studies.synthetic import write_cohort

    root = manual_dir(cfg, workdir)
    wanted = {"n": int(cfg.data.synthetic.n), "seed": int(cfg.data.synthetic.seed), "size": cfg.data.synthetic.size}
    marker = os.path.join(root, COHORT_SETTINGS)
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == wanted:
                log.info("synthetic cohort already at %s", root)
                return {"root": root, "reused": True, **wanted}
    elif os.path.isdir(root) and os.listdir(root):
        # Never overwrite a folder this job did not write (it may be a cohort the user made by hand, or data).
        if os.path.isfile(os.path.join(root, "metadata.csv")):
            log.info("using the existing cohort at %s (not written by this job: left as it is)", root)
            return {"root": root, "reused": True, "n": None}
        raise ConfigError(f"data.manual_dir {root} is not empty and holds no cohort: refusing to write into it")
    # Compressed NPZ (the release's format allows either; np.load reads both): a third of the disk.
    summary = write_cohort(root, wanted["n"], wanted["seed"], size=wanted["size"], compress=True, overwrite=True)
    write_text(marker, json.dumps(wanted))
    return {"root": root, "reused": False, **wanted, "summary": str(summary)}


def dataset_names(cfg) -> list[str]:
    names = [part[0] for part in cfg.data.train_mix]
    names.append("regions")  # evaluation and validation use the regions records
    if "vqa" in tuple(cfg.eval.tasks):
        names.append("vqa")
    return list(dict.fromkeys(names))


def _read_text(path: str) -> Optional[str]:
    """A small file's text, or None when it does not exist (the cohort's settings, a dataset's stamp of them)."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def build(cfg, workdir: str, *, progress: bool = True, names: Optional[list[str]] = None) -> dict[str, BuildSummary]:
    """Build (or reuse) every TFDS config the run needs; returns {config name: summary}.

    A dataset built from a synthetic cohort remembers the cohort's settings; when `synth` has since rewritten
    the cohort (other n, seed or size) the dataset is rebuilt instead of reused with studies that no longer exist.
    """
    out = {}
    root = manual_dir(cfg, workdir)
    settings = _read_text(os.path.join(root, COHORT_SETTINGS)) if cfg.data.source == "synthetic" else None
    kw = dict(beam=bool(cfg.data.beam), beam_options=cfg.data.beam_options or None, workers=cfg.data.beam_workers or None,
              volume_shape=tuple(cfg.data.record_shape), salt=salt_of(cfg), seed=int(cfg.seed), progress=progress)
    for name in names or dataset_names(cfg):
        out[name] = build_dataset(root, data_dir(cfg, workdir), name, **kw)
        stamp = os.path.join(out[name].dataset_dir, "cohort_settings.json")
        if settings is not None:
            previous = _read_text(stamp)
            if out[name].reused and previous is not None and previous != settings:
                log.info("dataset %s was built from an earlier synthetic cohort: rebuilding", name)
                out[name] = build_dataset(root, data_dir(cfg, workdir), name, overwrite=True, **kw)
            if previous != settings:
                write_text(stamp, settings)
        for line in out[name].lines():
            log.info(line)
    corpus = train_tokenizer(cfg, workdir)
    if corpus is not None:
        log.info("corpus tokenizer: %d pieces from %d texts of the training split%s", corpus["vocab_size"],
                 corpus["texts"], " (reused)" if corpus.get("reused") else "")
    return out


def tokenizer_dir(cfg, workdir: str) -> str:
    """Where `data.tokenizer='corpus'` keeps the tokenizer trained at build time: beside the datasets it comes from
    (in a multi-host job that is storage every host reads)."""
    return os.path.join(data_dir(cfg, workdir), "corpus_tokenizer")


def tokenizer_spec(cfg, workdir: str) -> str:
    """The LLM tokenizer as `load_tokenizer` takes it: "mistral-v1", an HF folder, or the corpus tokenizer's folder."""
    if not cfg.data.tokenizer:
        raise ConfigError("data.tokenizer is empty: set it to 'mistral-v1', 'corpus' or the LLM's tokenizer directory")
    if cfg.data.tokenizer != CORPUS:
        return cfg.data.tokenizer
    d = tokenizer_dir(cfg, workdir)
    if not os.path.isfile(os.path.join(d, "tokenizer.model")):
        raise FileNotFoundError(f"data.tokenizer='corpus': no tokenizer under {d}: run `python launch.py --mode build` "
                                "with the same config first (it trains the tokenizer on the training split)")
    return d


def train_tokenizer(cfg, workdir: str) -> Optional[dict]:
    """With data.tokenizer='corpus', train (or reuse, when the corpus is unchanged) the SentencePiece model on the
    training mixture's texts; its size is the decoder's vocabulary (model.decoder.vocab_size)."""
    if cfg.data.tokenizer != CORPUS:
        return None
    from jaxpetct.data.corpus import conversation_texts
    from jaxpetct.models.factory import decoder_config

    text = TextConfig(template=cfg.data.template, paraphrase_prob=float(cfg.data.paraphrase_prob),
                      language=cfg.data.report_language)
    parts = [(name, task) for name, task, _ in cfg.data.train_mix]
    if "vqa" in tuple(cfg.eval.tasks):
        parts.append(("vqa", "vqa"))
    texts = []
    for name, task in dict.fromkeys(parts):
        src = source(cfg, workdir, name, "train")
        texts += conversation_texts((src[i] for i in range(len(src))), task, text, seed=int(cfg.seed))
    vocab = decoder_config(cfg.model.decoder).vocab_size
    out = tokenizer_dir(cfg, workdir)
    stamp = corpus_tokenizer.fingerprint(texts, vocab)
    if corpus_tokenizer.is_current(out, stamp):
        with open(os.path.join(out, corpus_tokenizer.STAMP), encoding="utf-8") as f:
            return {**json.load(f), "reused": True}
    return corpus_tokenizer.train(texts, out, vocab)


@dataclasses.dataclass(frozen=True)
class ModelIO:
    """What the loaders must know about the model: its input grid and how many visual tokens it takes."""

    input_shape: tuple  # (C, D, H, W)
    num_visual_tokens: int
    grid: tuple = ()  # the encoder's (T, h, w) token grid (lesion_map targets)
    text_positions: int = 0  # CLIP: tokens the text tower can place (RoBERTa: max positions - pad id - 1); 0 = none
    slice_tokens: tuple = ()  # the token (T index) of each input slice (the encoder config's slice_tokens)


def lesion_table_path(cfg, workdir: str) -> str:
    """data.lesion_table, or a synthetic cohort's own ground truth (synthetic_truth.jsonl)."""
    if cfg.data.lesion_table:
        return os.path.abspath(cfg.data.lesion_table)
    if cfg.data.source == "synthetic":
        from jaxpetct.studies.synthetic import TRUTH

        return os.path.join(manual_dir(cfg, workdir), TRUTH)
    raise ConfigError("encoder_pretrain objective 'lesion_map' needs data.lesion_table (JSON lines of lesion centres "
                      "on the CT grid, see jaxpetct/data/lesion_targets.py); real cohorts have none by default")


def lesion_table(cfg, workdir: str) -> dict:
    """The lesion-centre table keyed by pseudonymous study id (read on each call: a loader reads it once)."""
    from jaxpetct.data.lesion_targets import read_lesion_table

    return read_lesion_table(lesion_table_path(cfg, workdir), salt_of(cfg))


_WARNED: set = set()


def _text_length(cfg, io: ModelIO, task: str) -> int:
    """data.max_length, cut for CLIP to what the text tower can place: a longer text would index past its position
    table (a NaN loss at step 0, once blamed on the learning rate). Said once per run in the log."""
    wanted = int(cfg.data.max_length)
    if task != "clip" or not io.text_positions or wanted <= io.text_positions:
        return wanted
    if (wanted, io.text_positions) not in _WARNED:
        _WARNED.add((wanted, io.text_positions))
        log.warning("data.max_length %d exceeds the text tower's %d usable positions: report texts are cut to %d "
                    "tokens for CLIP pre-training", wanted, io.text_positions, io.text_positions)
    return io.text_positions


def loader_config(cfg, io: ModelIO, *, train: bool, task: str = "report", seed: int = 0,
                  batch_size: Optional[int] = None, workdir: Optional[str] = None) -> pipeline.LoaderConfig:
    channels = tuple(cfg.data.image.channels)
    if len(channels) != io.input_shape[0]:
        raise ConfigError(f"data.image.channels {channels} give {len(channels)} channels but the encoder takes "
                          f"{io.input_shape[0]} (model.encoder.channels)")
    image = ImageConfig(shape=tuple(io.input_shape[1:]), channels=channels, pet_mode=cfg.data.image.pet_mode,
                        pet_max=float(cfg.data.image.pet_max), out_range=cfg.data.image.out_range)
    augment = AugmentConfig(**dict(cfg.data.augment)) if train else AugmentConfig()
    text = TextConfig(template=cfg.data.template, num_image_tokens=io.num_visual_tokens,
                      max_length=_text_length(cfg, io, task), paraphrase_prob=float(cfg.data.paraphrase_prob) if train else 0.0,
                      language=cfg.data.report_language)
    common = dict(task=task, batch_size=int(batch_size or cfg.data.batch_size), seed=seed,
                  buckets=tuple(cfg.data.buckets), image=image, augment=augment, text=text,
                  worker_count=int(cfg.data.worker_count) if train else 0,
                  read_threads=int(cfg.data.read_threads), read_buffer=int(cfg.data.read_buffer))
    if task == "lesion_map":
        common.update(lesion_table=lesion_table(cfg, workdir), lesion_grid=tuple(io.grid),
                      lesion_slice_tokens=tuple(io.slice_tokens))
    if train:
        return pipeline.LoaderConfig(train=True, **common)
    # Teacher-forced validation loss: training encoding, one ordered pass, the short last batch padded.
    return pipeline.LoaderConfig(train=True, shuffle=False, num_epochs=1, drop_remainder=False, pad_batch=True,
                                 **{**common, "augment": AugmentConfig(), "text": dataclasses.replace(text, instruction_variants=False, paraphrase_prob=0.0)})


def require_data(cfg, workdir: str) -> None:
    """Every dataset the run reads is built (FileNotFoundError naming the first missing one and the command that
    builds it otherwise): training and evaluation never build as a side effect."""
    for name in dataset_names(cfg):
        dataset_path(cfg, workdir, name)
    tokenizer_spec(cfg, workdir)


def dataset_path(cfg, workdir: str, name: str) -> str:
    """Where the built TFDS config `name` (at data.record_shape) lives; FileNotFoundError when it is not built."""
    from jaxpetct.data.build import make_config

    built_name = make_config(name, volume_shape=tuple(cfg.data.record_shape)).name  # as `build` names it
    try:
        return pipeline.dataset_dir(data_dir(cfg, workdir), built_name)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"dataset vimed_pet/{built_name} is not built under {data_dir(cfg, workdir)}: run `python launch.py "
            "--mode build` with the same config first, or --mode all (in a multi-host job data.data_dir must be "
            "storage every host reads)") from None


def source(cfg, workdir: str, name: str, split: str):
    """A random-access source over one split of a built dataset (never builds: `--mode build` does)."""
    return pipeline.open_source(dataset_path(cfg, workdir, name), split, cache_bytes=int(cfg.data.cache_mb) * 2**20)


def text_tokenizer(cfg, workdir: str, task: Optional[str]):
    """The LLM's tokenizer, or for the CLIP task the text tower's own (a PhoBERT/RoBERTa checkpoint folder)."""
    if task == "clip" and cfg.model.text_encoder.get("hf_dir"):
        from jaxpetct.text.encoder_tokenizer import ContentTokenizer

        return ContentTokenizer(cfg.model.text_encoder.hf_dir)
    return tokenizer_spec(cfg, workdir)


# Encoder tasks that read the regions records only, whatever the mixture: lesion centres are placed on region
# records, and the Cosmos tokenizer fine-tunes on the region volumes the VLM's report task reads.
REGION_TASKS = ("lesion_map", "volume")


def train_iterator(cfg, workdir: str, io: ModelIO, *, task_override: Optional[str] = None, seed: int = 0,
                   batch_size: Optional[int] = None):
    """A checkpointable Grain iterator over this host's shard of the training mixture."""
    config = loader_config(cfg, io, train=True, seed=seed, batch_size=batch_size, task=task_override or "report",
                           workdir=workdir)
    tokenizer = text_tokenizer(cfg, workdir, task_override)
    if task_override in REGION_TASKS:
        parts = [(source(cfg, workdir, "regions", "train"), task_override, 1.0)]
    else:
        parts = [(source(cfg, workdir, name, "train"), task_override or task, float(w))
                 for name, task, w in cfg.data.train_mix]
    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    if len(parts) == 1:
        ds = pipeline.make_dataset(parts[0][0], tokenizer, dataclasses.replace(config, task=parts[0][1]), **shard)
    else:
        ds = pipeline.make_mixture(parts, tokenizer, config, **shard)
    return iter(ds)


def num_train_examples(cfg, workdir: str, task_override: Optional[str] = None) -> int:
    """Training examples of an epoch: the mixture's, or the regions records a region-only encoder task reads."""
    if task_override in REGION_TASKS:
        return len(source(cfg, workdir, "regions", "train"))
    return sum(len(source(cfg, workdir, name, "train")) for name, _, _ in cfg.data.train_mix)


def val_batches(cfg, workdir: str, io: ModelIO, *, task: str = "report", split: Optional[str] = None):
    """This host's shard of the validation split as teacher-forced batches: a dataset each evaluation iterates
    afresh (a paper-size split does not fit in memory), or None when the split is empty."""
    split = split or cfg.eval.val_split
    config = loader_config(cfg, io, train=False, task=task, batch_size=cfg.data.val_batch_size, workdir=workdir)
    src = source(cfg, workdir, "regions", split)
    if len(src) == 0:
        return None
    return pipeline.make_dataset(src, text_tokenizer(cfg, workdir, task), config, shard_index=jax.process_index(),
                                 shard_count=jax.process_count())


def eval_examples(cfg, workdir: str, io: ModelIO, *, split: Optional[str] = None, blank: bool = False) -> Iterator:
    """Evaluation examples of a split, images decoded as in training: report generation (one per study region,
    from `regions`) and, when eval.tasks has "vqa", multi-turn VQA conversations (from `vqa`).

    `blank=True` gives the same examples with all-zero volumes: the baseline that shows whether the model uses
    the image at all. Volumes are `LazyVolume`s: in a multi-host job only the process whose devices hold an
    example's batch row decodes its volume.
    """
    from jaxpetct.eval.runner import EvalExample

    config = loader_config(cfg, io, train=False)
    split = split or cfg.eval.split
    from jaxpetct.eval.vlm_generate import LazyVolume

    shape = (len(config.image.channels), *config.image.shape)

    def volume(src, i: int):
        if blank:
            return LazyVolume(shape, lambda: np.zeros(shape, np.float32))
        return LazyVolume(shape, lambda: model_images(src[i], config.image, AugmentConfig(), None))

    for task, name in (("report", "regions"), ("vqa", "vqa")):
        if task not in tuple(cfg.eval.tasks):
            continue
        src = source(cfg, workdir, name, split)
        limit = int(cfg.eval.max_examples) or len(src)
        for i in range(min(limit, len(src))):
            record = src[i]  # the text; the volume is decoded again by the process that needs it (LazyVolume)
            image = volume(src, i)
            rid = as_text(record["id"]).replace("/", ":")
            study = as_text(record["study_id"])
            if task == "report":
                en = cfg.data.report_language == "en"
                yield EvalExample.report(rid, image, as_text(record["findings_en" if en else "findings"]),
                                         region=as_text(record["region"]), study_id=study,
                                         language=cfg.data.report_language)
            else:
                conv = json.loads(as_text(record["conversation"]))
                conv["id"] = rid
                yield EvalExample.from_llava(conv, image, study_id=study)
