"""One work item -> its TFDS examples: the only code that turns a loaded Study into records.

Both build paths call `process(item, options)`, which yields ("example", (key, example)) or ("quarantine",
record): a study that fails to load or to encode is quarantined whole (its examples are produced in full before
any is yielded), never half-written, and the caller keeps going.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Optional

import numpy as np

from jaxpetct.data import records
from jaxpetct.data.plan import BuildOptions, LesionList, WorkItem, quarantine_record
from jaxpetct.data.volume import crop_and_resize, resize, resized_spacing
from jaxpetct.studies import cohort, regions
from jaxpetct.studies.study import Study, StudyError
from jaxpetct.text.augment import comparison_text
from jaxpetct.text.lesion import Lesion
from jaxpetct.text.report import MUSCULOSKELETAL, report_to_json
from jaxpetct.text.vqa import group_conversations, lesion_conversations
from jaxpetct.errors import UserError


class ExampleError(UserError, ValueError):
    """A loaded study cannot become records (no report, too short to split, non-finite values)."""

    def __init__(self, file: str, reason: str):
        self.file, self.reason = file, reason
        super().__init__(f"{file}: {reason}")


def load(ref, options: BuildOptions) -> Study:
    study = cohort.load_study(ref, salt=options.salt)
    for name, vol in (("CT", study.ct), ("PET", study.pet)):
        if vol.data.dtype.kind == "f" and not np.all(np.isfinite(vol.data)):
            raise ExampleError("-", f"{name} holds non-finite values")
    return study


def region_split(study: Study, options: BuildOptions) -> regions.RegionSplit:
    slice_mm = float(study.ct.spacing_mm[0])
    config = regions.RegionConfig(overlap_slices=max(0, round(options.region_overlap_mm / slice_mm)))
    try:
        return regions.split_study(study, config)
    except ValueError as e:
        raise ExampleError("-", f"no region split: {e}") from None


def _require_report(study: Study):
    if study.report is None:
        raise ExampleError("-", "no report: nothing to pair the volumes with")
    return study.report


def _volumes(study: Study, start: int, stop: int, shape) -> dict:
    ct = crop_and_resize(study.ct.data, start, stop, shape)
    pet = crop_and_resize(study.pet.data, start, stop, shape)
    src = (stop - start, *study.ct.shape[1:])
    return records.image_fields(ct, pet, study.pet.units, resized_spacing(study.ct.spacing_mm, src, shape))


def _lesion_json(lesions: Optional[LesionList], section: Optional[str]) -> str:
    if lesions is None:
        return ""
    if section is None:
        return json.dumps(list(lesions.all), ensure_ascii=False)
    if lesions.by_section is None:
        return ""
    return json.dumps(list(lesions.by_section.get(section, ())), ensure_ascii=False)


def region_volumes(study: Study, options: BuildOptions) -> tuple[regions.RegionSplit, list[tuple[Any, dict]]]:
    """The region split and (region, stored image fields) of each region: what a `regions` record holds of the
    image. Prediction uses it on studies without a report, so a new patient's input matches a record's bit for bit."""
    rsplit = region_split(study, options)
    return rsplit, [(r, _volumes(study, r.start, r.stop, options.spec.volume_shape))
                    for r in rsplit.pairs(options.include_whole_body)]


def region_examples(study: Study, lesions: Optional[LesionList], options: BuildOptions) -> list:
    report = _require_report(study)
    meta = records.metadata_fields(study)
    out = []
    for r, image in region_volumes(study, options)[1]:
        en = study.report_en.findings.get(r.section, "") if study.report_en is not None else ""
        ex = {"id": f"{study.study_id}/{r.name}", **meta, **image,
              "region": r.name, "section": r.section, "findings": report.findings.get(r.section, ""),
              "findings_en": en, "impression": report.impression,
              "slice_range": np.asarray([r.start, r.stop], np.int32),
              "source_shape": np.asarray(study.ct.shape, np.int32), "lesions": _lesion_json(lesions, r.section)}
        out.append((ex["id"], ex))
    return out


def study_example(study: Study, lesions: Optional[LesionList], options: BuildOptions) -> list:
    report = _require_report(study)
    try:
        region_json = region_split(study, options).to_json()
    except ExampleError:
        region_json = {}
    ex = {"id": study.study_id, **records.metadata_fields(study),
          **_volumes(study, 0, study.ct.shape[0], options.spec.volume_shape),
          "report": report.full_text(), "report_json": json.dumps(report_to_json(report), ensure_ascii=False),
          "report_en": study.report_en.full_text() if study.report_en is not None else "",
          "impression": report.impression, "regions": json.dumps(region_json, ensure_ascii=False),
          "source_shape": np.asarray(study.ct.shape, np.int32), "lesions": _lesion_json(lesions, None)}
    return [(ex["id"], ex)]


def slice_examples(study: Study, options: BuildOptions) -> Iterator:
    """Paired 2D slices; lazy, since a paper-size study has ~300 of them (nothing after loading can fail)."""
    try:
        ranges = region_split(study, options).pairs(include_whole_body=False)
    except ExampleError:
        ranges = []
    meta = records.metadata_fields(study)
    depth, shape = study.ct.shape[0], options.spec.slice_shape
    spacing = resized_spacing(study.ct.spacing_mm[1:], study.ct.shape[1:], shape)
    for k in range(depth):
        ex = {"id": f"{study.study_id}/{k:04d}", **meta,
              **records.image_fields(resize(study.ct.data[k], shape), resize(study.pet.data[k], shape),
                                     study.pet.units, spacing),
              "slice_index": k, "num_slices": depth,
              "regions": ",".join(r.name for r in ranges if r.start <= k < r.stop)}
        yield ex["id"], ex


def vqa_examples(study: Study, item: WorkItem, options: BuildOptions) -> list:
    """Conversations from vqa.jsonl (about the whole study), else generated from the lesion lists."""
    sid, meta, shape = study.study_id, records.metadata_fields(study), options.spec.volume_shape
    convs = []  # (LLaVA record, region name, origin, slice range or None for the whole study)
    if item.vqa:
        for rec in group_conversations({sid: list(item.vqa)}, options.seed, max_turns=options.vqa_max_turns,
                                       image=lambda k: sid):
            convs.append((rec, "study", "release", None))
    elif item.lesions and item.lesions[0] is not None:
        lesions = item.lesions[0]
        report = study.report
        if lesions.by_section is not None:
            for r in region_split(study, options).pairs(options.include_whole_body):
                found = [Lesion.from_json(x) for x in lesions.by_section.get(r.section, ())]
                findings = report.findings.get(r.section, "") if report is not None else None
                region = MUSCULOSKELETAL if r.name == "whole_body" else r.name
                for rec in lesion_conversations(f"{sid}/{r.name}", found, region, findings, options.seed,
                                                max_turns=options.vqa_max_turns, max_pairs=options.vqa_max_pairs,
                                                image=f"{sid}/{r.name}"):
                    convs.append((rec, r.name, "generated", (r.start, r.stop)))
        found = [Lesion.from_json(x) for x in lesions.all]
        for rec in lesion_conversations(sid, found, None, report.impression if report is not None else None,
                                        options.seed, max_turns=options.vqa_max_turns,
                                        max_pairs=options.vqa_max_pairs, image=sid):
            convs.append((rec, "study", "generated", None))
    out, volumes = [], {}
    for rec, region, origin, span in convs:
        span = span or (0, study.ct.shape[0])
        if span not in volumes:  # one resize per region, shared by its conversations
            volumes[span] = _volumes(study, span[0], span[1], shape)
        ex = {"id": rec["id"], **meta, **volumes[span], "image": rec["image"], "region": region,
              "conversation": json.dumps(rec, ensure_ascii=False), "origin": origin}
        out.append((ex["id"], ex))
    return out


def _lesion_arg(lesions: LesionList, by_section: bool):
    if by_section:
        return {k: [Lesion.from_json(x) for x in v] for k, v in lesions.by_section.items() if k}
    return [Lesion.from_json(x) for x in lesions.all]


def comparison_example(prior: Study, current: Study, item: WorkItem, options: BuildOptions) -> list:
    """Both studies' whole volumes, side 0 the prior and side 1 the current, with the text of their differences."""
    if prior.pet.units != current.pet.units:
        raise ExampleError("-", f"PET units differ ({prior.pet.units} vs {current.pet.units}): no common scale")
    a, b = item.lesions
    by_section = a.by_section is not None and b.by_section is not None
    shape = options.spec.volume_shape
    sides = [(resize(s.ct.data, shape), resize(s.pet.data, shape)) for s in (prior, current)]
    img = records.image_fields(np.stack([c for c, _ in sides]), np.stack([p for _, p in sides]), current.pet.units,
                               resized_spacing(current.ct.spacing_mm, current.ct.shape, shape))
    ex = {"id": f"{prior.study_id}+{current.study_id}", **records.metadata_fields(current), **img,
          "prior_id": prior.study_id, "current_id": current.study_id,
          "text": comparison_text(_lesion_arg(a, by_section), _lesion_arg(b, by_section)),
          "prior_lesions": json.dumps(list(a.all), ensure_ascii=False),
          "current_lesions": json.dumps(list(b.all), ensure_ascii=False)}
    return [(ex["id"], ex)]


def examples(item: WorkItem, options: BuildOptions) -> Iterator:
    kind = options.spec.kind
    if kind == "comparison":
        prior, current = (load(r, options) for r in item.refs)
        yield from comparison_example(prior, current, item, options)
        return
    study = load(item.refs[0], options)
    lesions = item.lesions[0] if item.lesions else None
    if kind == "regions":
        yield from region_examples(study, lesions, options)
    elif kind == "study":
        yield from study_example(study, lesions, options)
    elif kind == "slices":
        yield from slice_examples(study, options)
    elif kind == "vqa":
        yield from vqa_examples(study, item, options)


def _sid(ref, options: BuildOptions) -> str:
    return cohort.study_id(ref, options.salt)


def process(item: WorkItem, options: BuildOptions) -> Iterator[tuple[str, object]]:
    """("example", (key, example)) for each record of the item, or ("quarantine", record) when it fails.

    Records of one item are all produced before the first is yielded (slices excepted, whose failures can only
    happen at load time), so a failing study never leaves part of itself in the dataset.
    """
    try:
        if options.spec.kind == "slices":
            study = load(item.refs[0], options)
            produced = slice_examples(study, options)
        else:
            produced = list(examples(item, options))
    except StudyError as e:
        yield "quarantine", quarantine_record(item.split, e.study, e.file, e.reason)
        return
    except (ExampleError, records.RecordError) as e:
        file, reason = (e.file, e.reason) if isinstance(e, ExampleError) else ("-", str(e))
        sid = "+".join(_sid(r, options) for r in item.refs)
        yield "quarantine", quarantine_record(item.split, sid, file, reason)
        return
    for key_example in produced:
        yield "example", key_example
