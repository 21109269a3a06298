"""ViMed-PET as a TFDS dataset: PET/CT volumes in physical units paired with Vietnamese report text.

    tfds build tfds_builder/vimed_pet --manual_dir=RELEASE_OR_DICOM_ROOT --data_dir=DATA --config=regions
    tfds build tfds_builder/vimed_pet ... --beam_pipeline_options="runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"

The builder is thin on purpose: what a record holds is decided in jaxpetct.data (records, plan, examples), so the
Grain loader that reads the records and the builder that writes them share one definition. The plain path and
the Beam path consume the same work items; Beam is used when the download config carries Beam options or a
runner (as `--beam_pipeline_options` does), or when the builder is made with `beam=True`.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Optional

import tensorflow_datasets as tfds

try:
    import jaxpetct  # noqa: F401
except ImportError:  # `tfds build tfds_builder/vimed_pet` from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jaxpetct.data import build_paths, no_tf, plan  # noqa: E402
from jaxpetct.data.records import RecordSpec, features  # noqa: E402
from jaxpetct.studies.deid import is_synthetic_cohort, resolve_salt  # noqa: E402

no_tf.install()  # plain builds over 1 GiB per split spill to disk through tf.io.gfile; see jaxpetct/data/no_tf.py

TINY_VOLUME, PAPER_VOLUME = (32, 64, 64), (140, 480, 480)
TINY_SLICE, PAPER_SLICE = (64, 64), (512, 512)


@dataclasses.dataclass(eq=False)
class VimedPetConfig(tfds.core.BuilderConfig):
    """A record kind and its stored grid (volume_shape is per side for `comparison`).

    `compress` adds TFDS's zlib on top of ArrayRecord's own zstd:3 chunks; on PET/CT it saves ~0 bytes and
    triples the build time, so it is off everywhere (kept for record stores without compression of their own).
    """

    kind: str = "regions"
    volume_shape: tuple = TINY_VOLUME
    slice_shape: tuple = TINY_SLICE
    compress: bool = False
    include_whole_body: bool = False

    @property
    def spec(self) -> RecordSpec:
        return RecordSpec(self.kind, tuple(self.volume_shape), tuple(self.slice_shape), self.compress)


def _configs() -> list[VimedPetConfig]:
    what = {
        "regions": "one example per (study, region): PET/CT resampled to {v} with the region's findings",
        "study": "one example per study: whole-body PET/CT resampled to {v} with the full report",
        "slices": "paired axial PET/CT slices resized to {s}, one example per CT slice",
        "vqa": "LLaVA-style conversations bound to their region or study, with its PET/CT at {v}",
        "comparison": "two studies' whole-body PET/CT at {v} each (prior, current) with a text of their differences",
    }
    out = []
    for suffix, volume, slc in (("", TINY_VOLUME, TINY_SLICE), ("_paper", PAPER_VOLUME, PAPER_SLICE)):
        for kind, text in what.items():
            v = (volume[0] // 2, *volume[1:]) if kind == "comparison" else volume
            desc = text.format(v="x".join(map(str, v)), s="x".join(map(str, slc)))
            size = "tiny grid for CPU tests and the synthetic cohort" if not suffix else "the paper's input grid"
            out.append(VimedPetConfig(name=kind + suffix, description=f"{desc} ({size}).", kind=kind,
                                      volume_shape=v, slice_shape=slc))
    return out


def _empty_split(exc: BaseException) -> Optional[str]:
    """The one-line reason when `exc` is a split without examples: ours (plain path) or TFDS's (Beam path, where
    the ValueError arrives wrapped in Beam's RuntimeError, after Beam's workers logged their own traceback of it);
    None for anything else."""
    if isinstance(exc, build_paths.EmptySplitError):
        return str(exc)
    found = re.search(r"generated examples is 0 for split (\w+)", str(exc))
    if found is None:
        return None
    return (f"split {found.group(1)}: every one of its studies was quarantined, so there is nothing to write (the "
            "build stops before publishing any split)")


class Builder(tfds.core.GeneratorBasedBuilder):
    """ViMed-PET (arXiv 2509.24739) PET/CT + Vietnamese report records, read from a manual dir."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: regions/study/slices/vqa/comparison configs (tiny and _paper grids), HU as int16, "
                 "SUV as uint16 x 0.002, temporal splits plus test_expert, quarantine.jsonl of failed studies.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Point --manual_dir at either
      * a ViMed-PET release root: metadata.csv, PETCT<year>/THANG <m>/{CT,PET,reports,reports_en}/..., optionally
        encoding.json (what the int16 values mean), expert_lesions/ (the expert test set), vqa.jsonl
        ({"patient_id", "question", "answer"}) and lesions.jsonl ({"patient_id", "lesions"});
      * or a folder of DICOM studies (CT + PET series; reports as report.json / report_en.json beside each study).
    Without the real data, write the synthetic cohort in the same layout:
      python -m jaxpetct.studies synth /tmp/vimed_synth --n 24 --seed 0
    """
    BUILDER_CONFIGS = _configs()
    DEFAULT_BUILDER_CONFIG_NAME = "regions"

    def __init__(self, *, salt: Optional[str] = None, beam: Optional[bool] = None, progress: bool = True,
                 seed: int = 0, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self._salt = salt
        self._beam = beam
        self._progress = progress
        self._seed = seed
        self._use_beam = False
        self._quarantine: list = []
        self._build_salt: Optional[str] = None
        self._notes: dict = {}
        super().__init__(**kwargs)

    @property
    def build_options(self) -> plan.BuildOptions:
        cfg = self.builder_config
        if self._build_salt is None:
            raise RuntimeError("build_options before _split_generators resolved the salt")
        return plan.BuildOptions(cfg.spec, salt=self._build_salt, include_whole_body=cfg.include_whole_body,
                                 seed=self._seed)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=features(self.builder_config.spec),
            homepage="https://arxiv.org/abs/2509.24739",
        )

    def _download_and_prepare(self, dl_manager, download_config):
        """Chooses the path, generates, then writes quarantine.jsonl into the (still temporary) dataset dir."""
        auto = download_config.beam_runner is not None or download_config.beam_options is not None
        self._use_beam = auto if self._beam is None else self._beam
        self._quarantine = []
        try:
            super()._download_and_prepare(dl_manager, download_config)
        except Exception as e:  # noqa: BLE001 - only TFDS's empty-split errors are turned into the one line
            empty = _empty_split(e)
            if empty is None:
                raise
            raise build_paths.EmptySplitError(f"{empty}; {self._quarantine_beside()}") from None
        found = build_paths.write_quarantine(str(self.data_dir), self._quarantine)
        self._notes["quarantined"] = len(found)
        self._notes["path"] = "beam" if self._use_beam else "plain"
        build_paths.write_notes(str(self.data_dir), self._notes)

    def _quarantine_beside(self) -> str:
        """Nothing is published; the reasons go beside where the dataset would have been."""
        records = build_paths.write_quarantine(str(self.data_dir), self._quarantine)  # merges Beam's parts
        if self._use_beam and not records:
            return ("the Beam pipeline stopped before its quarantine parts were written: the plain path (without "
                    "--beam) writes every reason to quarantine.jsonl")
        beside = os.path.dirname(os.path.normpath(str(self.data_dir)))
        build_paths.write_quarantine(beside, records)
        return f"all {len(records)} quarantined studies: {os.path.join(beside, build_paths.QUARANTINE)}"

    def _split_generators(self, dl_manager):
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError:
            raise plan.CohortError(f"manual_dir {getattr(dl_manager, '_manual_dir', '?')} does not exist or is "
                                   "empty (see MANUAL_DOWNLOAD_INSTRUCTIONS)") from None
        # --salt, else $JAXPETCT_SALT, else (a synthetic cohort only) the demo salt; real data without one stops here
        self._build_salt = resolve_salt(self._salt, synthetic=is_synthetic_cohort(str(manual_dir)))
        work = plan.make_plan(str(manual_dir), self.build_options)
        self._quarantine.extend(work.quarantine)
        self._notes = {"studies_listed": work.studies, "notes": work.notes,
                       "items": {split: len(items) for split, items in work.items.items()}}
        return {split: self._generate_examples(items=items, split=split) for split, items in work.items.items()}

    def _generate_examples(self, items, split):
        if self._use_beam:
            return build_paths.beam_examples(items, self.build_options, str(self.data_dir), split)
        return build_paths.plain_examples(items, self.build_options, self._quarantine, progress=self._progress,
                                       desc=f"{self.builder_config.name}/{split}")
