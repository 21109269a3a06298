"""Build one config of the ViMed-PET TFDS dataset from a manual dir, and say what came out.

`build_dataset` is what `launch.py --mode build` and `python -m jaxpetct.data build` call. The plain path runs
in this process with a tqdm bar per split; the Beam path runs TFDS's Beam pipeline (DirectRunner with
`direct_num_workers` processes by default, or any runner from `beam_options`, e.g.
"runner=DataflowRunner,project=...,region=...,temp_location=gs://...,extra_package=dist/jaxpetct-0.1.0.tar.gz").
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional, Sequence, Union

from jaxpetct.data.build_paths import read_quarantine
from jaxpetct.data.plan import CohortError


@dataclasses.dataclass(frozen=True)
class BuildSummary:
    dataset_dir: str
    config: str
    path: str  # "plain" or "beam"
    examples: dict  # split -> number of examples
    studies_listed: int
    quarantined: list  # quarantine.jsonl records: {split, study, file, reason}
    bytes: int  # size of the dataset directory
    seconds: float
    reused: bool = False  # the dataset already existed and was not rebuilt

    @property
    def studies_per_second(self) -> float:
        return self.studies_listed / self.seconds if self.seconds > 0 else float("nan")

    def lines(self) -> list[str]:
        out = [f"vimed_pet/{self.config} ({self.path} path) -> {self.dataset_dir}"]
        out += [f"  {split:12s} {n:7d} examples" for split, n in self.examples.items()]
        out.append(f"  studies listed {self.studies_listed}, quarantined {len(self.quarantined)}, "
                   f"{self.bytes / 2**20:.1f} MiB, {self.seconds:.1f} s ({self.studies_per_second:.2f} studies/s)")
        out += [f"  quarantined {q['study']} ({q['split']}): {q['file']}: {q['reason']}" for q in self.quarantined[:20]]
        return out


def beam_pipeline_options(options: Union[None, str, dict], workers: Optional[int] = None):
    """PipelineOptions from "k=v,k=v" (TFDS's --beam_pipeline_options syntax) or a dict; default: the
    DirectRunner in multi-processing mode with `workers` processes."""
    from apache_beam.options.pipeline_options import PipelineOptions

    if options is None:
        options = {"runner": "DirectRunner", "direct_num_workers": workers or max(2, os.cpu_count() or 2),
                   "direct_running_mode": "multi_processing"}
    if isinstance(options, str):
        return PipelineOptions(flags=[f"--{opt.strip()}" for opt in options.split(",") if opt.strip()])
    return PipelineOptions.from_dictionary(dict(options))


def make_config(config_name: str, volume_shape: Optional[Sequence[int]] = None,
                slice_shape: Optional[Sequence[int]] = None, include_whole_body: Optional[bool] = None,
                compress: Optional[bool] = None):
    """A builder config by name; with overrides, a derived config named after them (regions_16x32x32,
    regions_paper_zlib), so a dataset with another grid never lands in the directory of the named one."""
    from tfds_builder.vimed_pet.vimed_pet_dataset_builder import Builder

    by_name = {c.name: c for c in Builder.BUILDER_CONFIGS}
    if config_name not in by_name:
        raise CohortError(f"unknown config {config_name!r}; known: {', '.join(sorted(by_name))}")
    cfg = by_name[config_name]
    changes, suffix = {}, []
    if volume_shape is not None and tuple(volume_shape) != tuple(cfg.volume_shape):
        changes["volume_shape"] = tuple(int(s) for s in volume_shape)
        suffix.append("x".join(map(str, changes["volume_shape"])))
    if slice_shape is not None and tuple(slice_shape) != tuple(cfg.slice_shape):
        changes["slice_shape"] = tuple(int(s) for s in slice_shape)
        suffix.append("s" + "x".join(map(str, changes["slice_shape"])))
    if include_whole_body is not None and include_whole_body != cfg.include_whole_body:
        changes["include_whole_body"] = include_whole_body
        suffix.append("wb" if include_whole_body else "nowb")
    if compress is not None and compress != cfg.compress:
        changes["compress"] = compress
        suffix.append("zlib" if compress else "raw")
    if not changes:
        return cfg
    note = ", ".join(f"{k}={v}" for k, v in changes.items())
    return dataclasses.replace(cfg, name="_".join([cfg.name, *suffix]), description=f"{cfg.description} [{note}]",
                               **changes)


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def build_dataset(manual_dir: str, data_dir: str, config_name: str = "regions", *, beam: bool = False,
                  beam_options: Union[None, str, dict] = None, workers: Optional[int] = None,
                  volume_shape: Optional[Sequence[int]] = None, slice_shape: Optional[Sequence[int]] = None,
                  include_whole_body: Optional[bool] = None, compress: Optional[bool] = None,
                  salt: Optional[str] = None, seed: int = 0, progress: bool = True,
                  overwrite: bool = False) -> BuildSummary:
    """Build <data_dir>/vimed_pet/<config>/<version> from `manual_dir`; CohortError (one line) on a bad manual dir.

    An existing dataset is reused unless `overwrite`. The salt (`salt`, else $JAXPETCT_SALT, else for a synthetic
    cohort the public demo salt; real data without one is refused) is part of the dataset's identity: study ids are
    its HMAC pseudonyms.
    """
    import tensorflow_datasets as tfds

    from tfds_builder.vimed_pet.vimed_pet_dataset_builder import Builder

    manual_dir = os.path.abspath(os.fspath(manual_dir))
    if not os.path.isdir(manual_dir):
        raise CohortError(f"manual_dir {manual_dir} does not exist")
    cfg = make_config(config_name, volume_shape, slice_shape, include_whole_body, compress)
    if not progress:
        tfds.disable_progress_bar()
    builder = Builder(data_dir=os.fspath(data_dir), config=cfg, salt=salt, beam=beam, progress=progress, seed=seed)
    reused = os.path.isdir(builder.data_dir) and not overwrite
    mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    dl = tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode,
                                      beam_options=beam_pipeline_options(beam_options, workers) if beam else None)
    start = time.perf_counter()
    builder.download_and_prepare(download_config=dl)
    seconds = time.perf_counter() - start
    out = os.fspath(builder.data_dir)
    notes = {}
    notes_path = os.path.join(out, "build_notes.json")
    if os.path.isfile(notes_path):
        import json

        with open(notes_path, encoding="utf-8") as f:
            notes = json.load(f)
    return BuildSummary(out, cfg.name, notes.get("path", "beam" if beam else "plain"),
                        {k: v.num_examples for k, v in builder.info.splits.items()},
                        int(notes.get("studies_listed", 0)), read_quarantine(out), _dir_bytes(out), seconds, reused)
