"""Study viewer: one self-contained HTML page per evaluated study plus an index page, for reading results by eye.

Each page shows a coronal PET maximum-intensity projection (SUVbw 0-10, inverted grey: hot is dark, the nuclear
medicine convention) and axial CT slices in a soft-tissue window (level 40 HU, width 400 HU), all embedded as PNG
data URIs (no external files, so a page can be mailed or archived alone); the generated and the reference report
side by side, section by section; and the lesion tables that the deterministic extractor reads from each, with
the study's clinical F1. Images keep their physical aspect ratio (slice spacing vs pixel spacing) and show the head
at the top. Only pseudonymous ids appear: page names, titles and tables carry the study id and nothing else.

`write_viewer(pages, out_dir)`; `pages_from_predictions(records, studies)` joins a run's predictions.jsonl with
the loaded studies (`jaxpetct.studies.Study`).
"""
from __future__ import annotations

import dataclasses
import html
import pathlib
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from jaxpetct.atomic import write_text
from jaxpetct.eval.clinical import clinical_f1
from jaxpetct.eval.lesions_en import extractor_for
from jaxpetct.eval.png import data_uri, encode_png
from jaxpetct.eval.runner import PSEUDONYM
from jaxpetct.studies.regions import head_first_of
from jaxpetct.text.lesion import Lesion
from jaxpetct.text.prompts import REGION_PHRASES, region_section

SUV_WINDOW = (0.0, 10.0)
CT_WINDOW = (40.0, 400.0)  # level, width (HU): soft tissue
CT_SLICE_FRACTIONS = (0.3, 0.5, 0.7)
MAX_SIDE = 512
REGION_ORDER = ("study", "head_neck", "chest", "abdomen_pelvis", "whole_body", "musculoskeletal")
LESION_COLUMNS = (("type", "Hình dạng"), ("location", "Vị trí"), ("size", "Kích thước"), ("suvmax", "SUVmax"),
                  ("uptake", "Tăng chuyển hoá FDG"), ("invasion", "Xâm lấn"), ("stage", "Giai đoạn"))


class ViewerError(ValueError):
    """A page that cannot be drawn; names the pseudonymous study id and the reason."""


@dataclasses.dataclass(frozen=True)
class StudyPage:
    study_id: str
    pet: np.ndarray  # (D, H, W) SUVbw
    ct: np.ndarray  # (D, H, W) HU
    generated: Mapping[str, str]  # section label -> text, in display order
    reference: Optional[Mapping[str, str]]  # None: a new patient's prediction, nothing to compare with
    pet_spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (slice, row, column)
    ct_spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    head_first: bool = True  # slice 0 is the top of the patient
    index_link: bool = True  # the page sits beside an index.html of all studies
    language: str = "vi"  # of the reports: picks the lesion extractor

    @classmethod
    def from_study(cls, study, generated: Mapping[str, str], reference: Optional[Mapping[str, str]]) -> "StudyPage":
        return cls(study.study_id, study.pet.data, study.ct.data, generated, reference,
                   tuple(study.pet.spacing_mm), tuple(study.ct.spacing_mm), head_first_of(study.ct.direction))


def _resize_nearest(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    r = np.minimum((np.arange(rows) + 0.5) * img.shape[0] / rows, img.shape[0] - 1).astype(int)
    c = np.minimum((np.arange(cols) + 0.5) * img.shape[1] / cols, img.shape[1] - 1).astype(int)
    return img[r][:, c]


def _physical(img: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Resample so one pixel is square in millimetres, longest side at most MAX_SIDE."""
    h_mm, w_mm = img.shape[0] * row_mm, img.shape[1] * col_mm
    scale = MAX_SIDE / max(h_mm, w_mm)
    return _resize_nearest(img, max(1, round(h_mm * scale)), max(1, round(w_mm * scale)))


def pet_mip(pet: np.ndarray, spacing_mm: Sequence[float], head_first: bool = True) -> np.ndarray:
    """Coronal maximum-intensity projection (max over the anterior-posterior rows) as inverted grey uint8."""
    pet = np.nan_to_num(np.asarray(pet, np.float32))
    mip = pet.max(axis=1)  # (D, W)
    if not head_first:
        mip = mip[::-1]
    lo, hi = SUV_WINDOW
    grey = 255.0 - 255.0 * np.clip((mip - lo) / (hi - lo), 0.0, 1.0)
    return _physical(np.rint(grey).astype(np.uint8), spacing_mm[0], spacing_mm[2])


def ct_slices(ct: np.ndarray, spacing_mm: Sequence[float], head_first: bool = True,
              fractions: Sequence[float] = CT_SLICE_FRACTIONS) -> list[tuple[int, np.ndarray]]:
    """(slice index, uint8 image) of axial CT slices at the given depth fractions from the top, soft-tissue window."""
    ct = np.nan_to_num(np.asarray(ct, np.float32))
    level, width = CT_WINDOW
    out = []
    for f in fractions:
        k = min(int(f * ct.shape[0]), ct.shape[0] - 1)
        k = k if head_first else ct.shape[0] - 1 - k
        grey = 255.0 * np.clip((ct[k] - (level - width / 2)) / width, 0.0, 1.0)
        out.append((k, _physical(np.rint(grey).astype(np.uint8), spacing_mm[1], spacing_mm[2])))
    return out


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _lesion_table(lesions: Sequence[Lesion], table_id: str) -> str:
    head = "".join(f"<th>{_e(name)}</th>" for _, name in LESION_COLUMNS)
    if not lesions:
        body = f'<tr><td colspan="{len(LESION_COLUMNS)}">Không phát hiện tổn thương (no lesion extracted)</td></tr>'
    else:
        body = "".join("<tr>" + "".join(f"<td>{_e(getattr(les, key))}</td>" for key, _ in LESION_COLUMNS) + "</tr>"
                       for les in lesions)
    return f'<table id="{table_id}" class="lesions"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(img: np.ndarray, img_id: str, caption: str, kind: str) -> str:
    return (f'<figure><img id="{img_id}" class="study-image {kind}" alt="{_e(caption)}" width="{img.shape[1]}" '
            f'height="{img.shape[0]}" src="{data_uri(encode_png(img))}"><figcaption>{_e(caption)}</figcaption></figure>')


_CSS = """body{font-family:sans-serif;margin:16px;color:#111}figure{display:inline-block;margin:4px 8px 4px 0;
vertical-align:top}figure img{max-height:420px;width:auto;image-rendering:pixelated;border:1px solid #888}
figure img.ct{max-height:260px}
table{border-collapse:collapse;margin:8px 0;width:100%}td,th{border:1px solid #aaa;padding:4px 6px;vertical-align:top;
text-align:left}th{background:#eee}.reports td{width:45%;white-space:pre-wrap}.reports td.section{width:10%}
.f1{font-family:monospace}"""


def _text_for_lesions(sections: Mapping[str, str]) -> str:
    """The whole-study text when there is one (regions repeat it), else the sections joined."""
    for label, text in sections.items():
        if label.startswith("study"):
            return text
    return " ".join(sections.values())


def _reports_table(page: StudyPage) -> str:
    ref = page.reference
    labels = list(dict.fromkeys([*page.generated, *(ref or {})]))
    head = "<th>Section</th><th>Generated</th>" + ("<th>Reference</th>" if ref is not None else "")
    rows = "".join(f'<tr><td class="section">{_e(lab)}</td><td class="report-generated">{_e(page.generated.get(lab, ""))}'
                   "</td>" + (f'<td class="report-reference">{_e(ref.get(lab, ""))}</td>' if ref is not None else "")
                   + "</tr>" for lab in labels)
    return f'<table class="reports"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def render_page(page: StudyPage) -> tuple[str, dict]:
    """(HTML, summary) of one study page; without a reference, the generated report and its lesions only."""
    if not PSEUDONYM.fullmatch(page.study_id):
        raise ViewerError("study id is not a pseudonym; the viewer shows pseudonymous ids only")
    for name, vol in (("PET", page.pet), ("CT", page.ct)):
        if np.ndim(vol) != 3 or min(np.shape(vol)) < 1:
            raise ViewerError(f"study {page.study_id}: {name} volume must be 3-d (D, H, W), got shape {np.shape(vol)}")
    extract_lesions = extractor_for(page.language)
    gen_les = extract_lesions(_text_for_lesions(page.generated))
    mip = pet_mip(page.pet, page.pet_spacing_mm, page.head_first)
    images = [_img(mip, "pet-mip", "PET MIP (coronal), SUV 0-10", "pet")]
    images += [_img(img, f"ct-slice-{i}", f"CT axial slice {k + 1}/{page.ct.shape[0]}, W400/L40", "ct")
               for i, (k, img) in enumerate(ct_slices(page.ct, page.ct_spacing_mm, page.head_first))]
    sid = _e(page.study_id)
    lesions = f"<h3>Generated report ({len(gen_les)})</h3>{_lesion_table(gen_les, 'lesions-generated')}"
    summary = {"study_id": page.study_id, "page": f"{page.study_id}.html", "generated_lesions": len(gen_les)}
    if page.reference is not None:
        ref_les = extract_lesions(_text_for_lesions(page.reference))
        f1 = clinical_f1([gen_les], [ref_les])
        scores = " ".join(f"{k} {f1[k]:.1f}" for k in ("F1-T", "F1-TP", "F1-TF", "F1-TPF"))
        lesions = (f'<p class="f1">Clinical F1 of this study: {_e(scores)}</p>{lesions}'
                   f"<h3>Reference report ({len(ref_les)})</h3>{_lesion_table(ref_les, 'lesions-reference')}")
        summary.update({"reference_lesions": len(ref_les), "F1-T": f1["F1-T"], "F1-TPF": f1["F1-TPF"]})
    doc = (f'<!DOCTYPE html><html lang="vi"><head><meta charset="utf-8"><title>Study {sid}</title>'
           f"<style>{_CSS}</style></head><body>"
           + ('<p><a href="index.html">&larr; all studies</a></p>' if page.index_link else "") +
           f"<h1>Study {sid}</h1><section id=\"images\">{''.join(images)}</section>"
           f"<h2>Reports</h2>{_reports_table(page)}<h2>Lesions (deterministic extractor)</h2>{lesions}"
           "</body></html>\n")
    return doc, summary


def _index(entries: Sequence[dict], skipped: Sequence[dict]) -> str:
    rows = "".join(f'<tr><td><a href="{_e(e["page"])}">{_e(e["study_id"])}</a></td><td>{e["generated_lesions"]}</td>'
                   f'<td>{e["reference_lesions"]}</td><td>{e["F1-T"]:.1f}</td><td>{e["F1-TPF"]:.1f}</td></tr>'
                   for e in entries)
    skip = "".join(f"<li>{_e(s['study_id'])}: {_e(s['reason'])}</li>" for s in skipped)
    return (f'<!DOCTYPE html><html lang="vi"><head><meta charset="utf-8"><title>Evaluated studies</title>'
            f"<style>{_CSS}</style></head><body><h1>Evaluated studies ({len(entries)})</h1>"
            '<table id="studies"><thead><tr><th>Study</th><th>Lesions (generated)</th><th>Lesions (reference)</th>'
            f"<th>F1-T</th><th>F1-TPF</th></tr></thead><tbody>{rows}</tbody></table>"
            + (f"<h2>Skipped</h2><ul>{skip}</ul>" if skipped else "") + "</body></html>\n")


def write_viewer(pages: Iterable[StudyPage], out_dir) -> dict:
    """Write `<study_id>.html` per page and `index.html` (last); bad pages are skipped with a reason."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries, skipped = [], []
    for page in pages:
        try:
            doc, entry = render_page(page)
        except ViewerError as e:
            sid = page.study_id if PSEUDONYM.fullmatch(str(page.study_id)) else "-"
            skipped.append({"study_id": sid, "reason": str(e) if sid != "-" else "study id is not a pseudonym"})
            continue
        write_text(out / entry["page"], doc)
        entries.append(entry)
    write_text(out / "index.html", _index(entries, skipped))
    return {"index": str(out / "index.html"), "pages": entries, "skipped": skipped}


def section_label(region: Optional[str]) -> str:
    """Display label of a prediction's region ("study" = whole report)."""
    if region in (None, "study", "whole_body_report"):
        return "study: toàn thân"
    try:
        section = region_section(region)
    except ValueError:  # a region name the prompts do not know: show it as it is
        return str(region)
    return f"{region}: {REGION_PHRASES.get(section, section)}" if section else str(region)


def pages_from_predictions(records: Iterable[Mapping], studies: Iterable, language: str = "vi") -> list[StudyPage]:
    """Pages for the studies that have report predictions; regions in anatomical order."""
    by_study: dict[str, list[Mapping]] = {}
    for r in records:
        if r.get("task") == "report" and r.get("study_id") is not None:
            by_study.setdefault(str(r["study_id"]), []).append(r)
    rank = {name: i for i, name in enumerate(REGION_ORDER)}
    pages = []
    for study in studies:
        recs = sorted(by_study.get(study.study_id, []), key=lambda r: rank.get(r.get("region") or "study", 99))
        if not recs:
            continue
        gen = {section_label(r.get("region")): r["generated"] for r in recs}
        ref = {section_label(r.get("region")): r["reference"] for r in recs}
        pages.append(dataclasses.replace(StudyPage.from_study(study, gen, ref), language=language))
    return pages
