"""Predict every study under an input and write one folder per study; a bad study is listed, the rest go on.

`<out>/<study id>/` holds `report.json` (the release's schema: impression + the four findings sections; the model
writes region findings, so the impression is left empty for the reader), `lesions.json` (the deterministic
extractor's lesion table of each generated section, paper schema) and `viewer.html` (PET MIP, CT slices, the
generated report and its lesions). `<out>/predict_summary.json` lists the studies predicted and the failures with
their file and reason. Every write is atomic; only pseudonymous ids and relative paths appear anywhere.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from jaxpetct.atomic import write_text
from jaxpetct.eval.lesions_en import extractor_for
from jaxpetct.eval.viewer import StudyPage, render_page, section_label
from jaxpetct.predict.core import Prediction, PredictError, Predictor
from jaxpetct.predict.inputs import MAX_UNZIPPED_BYTES, InputError, opened
from jaxpetct.studies import cohort
from jaxpetct.studies.deid import is_synthetic_cohort, resolve_salt
from jaxpetct.studies.study import Study, StudyError
from jaxpetct.text.report import SECTIONS, Report, report_to_json

SUMMARY = "predict_summary.json"


@dataclasses.dataclass
class PredictSummary:
    predicted: list  # pseudonymous study ids, in input order
    failed: list  # {"study", "file", "reason"}
    skipped_files: int = 0  # files that joined no study (DICOM scans)
    skipped_example: str = ""  # the first of them, "file: reason"

    def to_json(self) -> dict:
        return {"predicted": self.predicted, "failed": self.failed, "skipped_files": self.skipped_files,
                "skipped_example": self.skipped_example}


def write_study(pred: Prediction, study: Study, out_dir: str, language: str = "vi") -> str:
    """The three files of one study (report.json with the release's keys: reports/ or, English, reports_en/);
    returns its folder."""
    folder = os.path.join(out_dir, pred.study_id)
    os.makedirs(folder, exist_ok=True)
    findings = pred.findings
    report = Report(impression="", findings={s: findings.get(s, "") for s in SECTIONS})
    write_text(os.path.join(folder, "report.json"),
               json.dumps(report_to_json(report, english=language == "en"), ensure_ascii=False, indent=1))
    extract = extractor_for(language)
    lesions = {s: [les.to_json() for les in extract(text)] for s, text in findings.items()}
    write_text(os.path.join(folder, "lesions.json"),
               json.dumps({"study_id": pred.study_id, "sections": lesions}, ensure_ascii=False, indent=1))
    page = dataclasses.replace(StudyPage.from_study(study, {section_label(r): t for r, t in pred.regions.items()}, None),
                               index_link=False, language=language)
    write_text(os.path.join(folder, "viewer.html"), render_page(page)[0])
    return folder


def _select(refs: list, patient: Optional[str]) -> list:
    if not patient:
        return list(refs)
    hits = [r for r in refs if r.release is not None and patient in (r.key, r.release.name)]
    if not hits:
        raise InputError(f"--patient {patient}: no such study in metadata.csv")
    return hits


def predict_path(predictor: Predictor, path: str, out_dir: str, *, salt: Optional[str] = None,
                 patient: Optional[str] = None, progress: bool = True,
                 max_bytes: int = MAX_UNZIPPED_BYTES) -> PredictSummary:
    """Predict the studies under `path` (see inputs.py) into `out_dir`; InputError when nothing can be read."""
    from tqdm.auto import tqdm

    with opened(path, max_bytes=max_bytes) as root:
        try:
            refs = cohort.list_studies(root)
        except StudyError as e:
            raise InputError(f"--study {os.path.basename(path)}: {e.file}: {e.reason}") from None
        skipped = list(getattr(refs, "skipped", []))
        refs = _select(refs, patient)
        if not refs:
            hint = f" ({len(skipped)} files skipped, e.g. {skipped[0].file}: {skipped[0].reason})" if skipped else ""
            raise InputError(f"--study {os.path.basename(path)}: no CT/PET study found{hint}")
        salt = resolve_salt(salt, synthetic=is_synthetic_cohort(root))
        summary = PredictSummary([], [], len(skipped), f"{skipped[0].file}: {skipped[0].reason}" if skipped else "")
        os.makedirs(out_dir, exist_ok=True)
        for ref in tqdm(refs, desc="predict", unit="study", disable=not progress):
            try:
                study = cohort.load_study(ref, salt=salt)
                write_study(predictor.predict(study), study, out_dir, predictor.pre.language)
                summary.predicted.append(study.study_id)
            except StudyError as e:
                summary.failed.append({"study": e.study, "file": e.file, "reason": e.reason})
            except PredictError as e:
                summary.failed.append({"study": cohort.study_id(ref, salt), "file": "-", "reason": str(e)})
    write_text(os.path.join(out_dir, SUMMARY), json.dumps(summary.to_json(), ensure_ascii=False, indent=1))
    return summary
